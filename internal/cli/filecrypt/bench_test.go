package filecrypt

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/wardproject/ward/envelope"
)

// BenchmarkFileToFile encrypts and decrypts a 64 MiB file (WARD_BENCH_MB) to a new file
// (fsync and rename, as `ward encrypt -o` does) in WARD_BENCH_DIR (default
// the system temporary directory, usually on disk), with the output
// written back while later segments are encrypted (writebehind=on) and
// only by the final fsync (off). Read the ratio of the two, side by side.
func BenchmarkFileToFile(b *testing.B) {
	dir := os.Getenv("WARD_BENCH_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	dir, err := os.MkdirTemp(dir, "ward-filecrypt-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := envelope.NewLocalKMS("bench")
	if err != nil {
		b.Fatal(err)
	}
	r := &Runner{KMS: l}
	size := int64(64 << 20)
	if mb, err := strconv.Atoi(os.Getenv("WARD_BENCH_MB")); err == nil && mb > 0 {
		size = int64(mb) << 20
	}
	src, enc, dec := filepath.Join(dir, "in"), filepath.Join(dir, "in.ward"), filepath.Join(dir, "out")
	if err := os.WriteFile(src, randBytes(int(size)), 0o600); err != nil {
		b.Fatal(err)
	}
	if _, err := r.EncryptFile(bg, enc, src, l.KeyName()); err != nil {
		b.Fatal(err)
	}
	saved := writeBehindChunk
	defer func() { writeBehindChunk = saved }()
	for _, op := range []string{"encrypt", "decrypt"} {
		for _, chunk := range []int64{0, saved} {
			name := "on"
			if chunk == 0 {
				name = "off"
			}
			b.Run(fmt.Sprintf("%s/writebehind=%s", op, name), func(b *testing.B) {
				writeBehindChunk = chunk
				b.SetBytes(size)
				for b.Loop() {
					var err error
					if op == "encrypt" {
						_, err = r.EncryptFile(bg, filepath.Join(dir, "out.ward"), src, l.KeyName())
					} else {
						_, err = r.DecryptFile(bg, dec, enc)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestWriteBehindRoundTrip: with writeback started every 4 KiB (many
// sync_file_range calls, unaligned ranges) files still round-trip, and
// with it off too.
func TestWriteBehindRoundTrip(t *testing.T) {
	saved := writeBehindChunk
	defer func() { writeBehindChunk = saved }()
	for _, chunk := range []int64{0, 4096, saved} {
		writeBehindChunk = chunk
		r, l, dir := setup(t)
		pt := randBytes(1<<20 + 123)
		src, enc, dec := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward"), filepath.Join(dir, "out")
		write(t, src, pt)
		if _, err := r.EncryptFile(bg, enc, src, l.KeyName(), envelope.WithSegmentSize(envelope.MinSegmentSize)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.DecryptFile(bg, dec, enc); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(dec); !bytes.Equal(b, pt) {
			t.Fatalf("chunk %d: round trip differs", chunk)
		}
	}
}

// BenchmarkStreamToDevNull is `ward encrypt -i FILE > /dev/null` and
// `ward decrypt -i FILE.ward > /dev/null` without the process start: the
// CLI's streaming path from a file in the page cache to /dev/null.
func BenchmarkStreamToDevNull(b *testing.B) {
	dir := b.TempDir()
	l, err := envelope.NewLocalKMS("bench")
	if err != nil {
		b.Fatal(err)
	}
	r := &Runner{KMS: l}
	const size = 64 << 20
	src, enc := filepath.Join(dir, "in"), filepath.Join(dir, "in.ward")
	if err := os.WriteFile(src, randBytes(size), 0o600); err != nil {
		b.Fatal(err)
	}
	if _, err := r.EncryptFile(bg, enc, src, l.KeyName()); err != nil {
		b.Fatal(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	for _, op := range []string{"encrypt", "decrypt"} {
		b.Run(op, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				in, err := os.Open(map[string]string{"encrypt": src, "decrypt": enc}[op])
				if err != nil {
					b.Fatal(err)
				}
				if op == "encrypt" {
					_, err = r.Encrypt(bg, null, in, l.KeyName())
				} else {
					_, err = r.Decrypt(bg, null, in)
				}
				in.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
