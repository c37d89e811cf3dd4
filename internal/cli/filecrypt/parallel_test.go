package filecrypt

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/envelope"
)

// Files above mapMin are encrypted from a memory mapping, smaller ones
// and files read from an offset through ReadAt: every way gives a file
// that decrypts, through the file path and the stream path, and the
// stream path reads stdin-like files from their current offset.
func TestEncryptPathsRoundTrip(t *testing.T) {
	r, l, dir := setup(t)
	for _, n := range []int{0, 1, 100 << 10, mapMin - 1, mapMin, mapMin + 3<<20 + 5, 2*mapChunk + 7} {
		pt := randBytes(n)
		src, enc, dec := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward"), filepath.Join(dir, "out")
		write(t, src, pt)
		if got, err := r.EncryptFile(bg, enc, src, l.KeyName()); err != nil || got != int64(n) {
			t.Fatalf("%d bytes: encrypt: %d, %v", n, got, err)
		}
		if _, err := r.DecryptFile(bg, dec, enc); err != nil {
			t.Fatalf("%d bytes: decrypt: %v", n, err)
		}
		if b, _ := os.ReadFile(dec); !bytes.Equal(b, pt) {
			t.Fatalf("%d bytes: round trip differs", n)
		}
		// Streams from an open file at an offset (stdin redirected from a
		// file that was partly read): only the rest is encrypted.
		in, _ := os.Open(src)
		skip := int64(min(n, 3))
		in.Seek(skip, io.SeekStart)
		var ct bytes.Buffer
		_, err := r.Encrypt(bg, &ct, in, l.KeyName())
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
		write(t, enc, ct.Bytes())
		encIn, _ := os.Open(enc)
		var out bytes.Buffer
		_, err = r.Decrypt(bg, &out, encIn)
		encIn.Close()
		if err != nil || !bytes.Equal(out.Bytes(), pt[skip:]) {
			t.Fatalf("%d bytes from %d: stream round trip: %v", n, skip, err)
		}
	}
}

// A mapped input file truncated while it is encrypted fails the
// encryption with ErrInputFault (never a crash, never a final segment):
// faults in the envelope's sealing goroutines and in the caller's own
// copy (one worker) alike.
func TestMappedInputTruncated(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("inputs are mapped on Linux only")
	}
	r, l, dir := setup(t)
	src := filepath.Join(dir, "src")
	for _, workers := range []int{1, 4} {
		write(t, src, randBytes(16<<20))
		f, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		m, unmap, ok := mapFile(f, 16<<20)
		if !ok {
			t.Fatal("could not map the input")
		}
		if err := os.Truncate(src, 1<<20); err != nil { // the pages past 1 MiB are gone
			t.Fatal(err)
		}
		var ct bytes.Buffer
		w, err := envelope.NewWriter(bg, &ct, l, l.KeyName(), envelope.WithConcurrency(workers))
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.writeMapped(w, m)
		if cerr := w.Close(); !errors.Is(cerr, envelope.ErrInputFault) {
			t.Errorf("workers %d: Close after the fault: %v", workers, cerr)
		}
		unmap()
		f.Close()
		if !errors.Is(err, envelope.ErrInputFault) {
			t.Fatalf("workers %d: %v, want ErrInputFault", workers, err)
		}
		if _, err := r.Decrypt(bg, io.Discard, bytes.NewReader(ct.Bytes())); err == nil {
			t.Fatalf("workers %d: the output of a failed encryption decrypts", workers)
		}
	}
}

// The file paths decrypt through the parallel ReaderAt: segments swapped,
// the last one cut short or dropped, data appended, a bit flipped: each
// fails, DecryptFile leaves no output and no temporary file, and the
// stream path (stdout) releases only whole authenticated segments before
// the damage (nothing at all when the length is wrong: the final segment
// is checked first).
func TestDecryptFileParallelAttacks(t *testing.T) {
	r, l, dir := setup(t)
	const seg = envelope.MinSegmentSize
	const nseg = 600 // several batches of 256 segments, opened in parallel
	pt := randBytes(nseg*seg - 100)
	src, enc := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward")
	write(t, src, pt)
	if _, err := r.EncryptFile(bg, enc, src, l.KeyName(), envelope.WithSegmentSize(seg)); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(enc)
	h, _ := envelope.ParseHeader(bytes.NewReader(good))
	cs := seg + 16
	at := func(b []byte, i int) []byte { return b[h.Len+i*cs : min(len(b), h.Len+(i+1)*cs)] }
	swap := func(i, j int) []byte {
		b := bytes.Clone(good)
		a, c := bytes.Clone(at(b, i)), bytes.Clone(at(b, j))
		copy(at(b, i), c)
		copy(at(b, j), a)
		return b
	}
	flip := bytes.Clone(good)
	at(flip, 400)[7] ^= 1
	for _, c := range []struct {
		name    string
		bad     []byte
		want    []error
		release int // segments that may be released to a stream
	}{
		{"segments 10 and 500 swapped", swap(10, 500), []error{envelope.ErrSegmentAuth}, 10},
		{"segments in different batches swapped", swap(255, 256), []error{envelope.ErrSegmentAuth}, 255},
		{"last segment cut short", good[:len(good)-1], []error{envelope.ErrSegmentAuth}, 0},
		{"last segment dropped", good[:h.Len+(nseg-1)*cs], []error{envelope.ErrTruncated}, 0},
		{"a segment appended", append(bytes.Clone(good), at(good, 3)...), []error{envelope.ErrTrailing, envelope.ErrSegmentAuth}, 0},
		{"bytes appended", append(bytes.Clone(good), 1, 2, 3), []error{envelope.ErrTrailing, envelope.ErrSegmentAuth}, 0},
		{"bit flipped in segment 400", flip, []error{envelope.ErrSegmentAuth}, 400},
	} {
		write(t, enc, c.bad)
		out := filepath.Join(dir, "out")
		if _, err := r.DecryptFile(bg, out, enc); !isOneOf(err, c.want...) {
			t.Errorf("%s: DecryptFile: %v, want one of %v", c.name, err, c.want)
		}
		if got := strings.Join(listDir(t, dir), ","); got != "src,src.ward" {
			t.Errorf("%s: left behind: %s", c.name, got)
		}
		in, _ := os.Open(enc)
		var stream bytes.Buffer
		_, err := r.Decrypt(bg, &stream, in)
		in.Close()
		if !isOneOf(err, c.want...) {
			t.Errorf("%s: stream: %v, want one of %v", c.name, err, c.want)
		}
		if stream.Len() > c.release*seg || stream.Len()%seg != 0 || !bytes.Equal(stream.Bytes(), pt[:stream.Len()]) {
			t.Errorf("%s: stream released %d bytes (at most %d segments, authenticated)", c.name, stream.Len(), c.release)
		}
	}
}

func isOneOf(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// TestEncryptFileTruncatedWhileRunning is the real race: EncryptFile of
// an input while another goroutine truncates the file at some point of
// the run (before it starts, while the segments seal, after it is done),
// mapped (24 MiB) and read in parallel with ReadAt (3 MiB). The process
// never crashes; a failed run says the input faulted or shrank and leaves
// no output and no temporary file; a run that succeeds wrote a file that
// decrypts to the input as it was (whole) or as the truncation left it,
// never a prefix cut short.
func TestEncryptFileTruncatedWhileRunning(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("inputs are mapped on Linux only")
	}
	r, l, dir := setup(t)
	src, enc := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward")
	const cut = 1 << 20
	for _, size := range []int{24 << 20, 3 << 20} {
		pt := randBytes(size)
		faults := 0
		for i := range 8 {
			write(t, src, pt)
			os.Remove(enc)
			done := make(chan error, 1)
			go func() {
				_, err := r.EncryptFile(bg, enc, src, l.KeyName(), envelope.WithSegmentSize(envelope.MinSegmentSize))
				done <- err
			}()
			// Spread the truncation over the run: right away, then after
			// yielding a growing number of times.
			for range i * i * 20 {
				runtime.Gosched()
			}
			if err := os.Truncate(src, cut); err != nil {
				t.Fatal(err)
			}
			err := <-done
			if err != nil {
				if !errors.Is(err, envelope.ErrInputFault) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("size %d run %d: %v, want success, ErrInputFault or ErrUnexpectedEOF", size, i, err)
				}
				faults++
				if got := strings.Join(listDir(t, dir), ","); got != "src" {
					t.Fatalf("size %d run %d: a failed encryption left %s", size, i, got)
				}
				continue
			}
			var out bytes.Buffer
			in, _ := os.Open(enc)
			_, err = r.Decrypt(bg, &out, in)
			in.Close()
			if err != nil {
				t.Fatalf("size %d run %d: the output of a successful encryption: %v", size, i, err)
			}
			if !bytes.Equal(out.Bytes(), pt) && !bytes.Equal(out.Bytes(), pt[:cut]) {
				t.Fatalf("size %d run %d: decrypts to %d bytes, neither the input nor its truncation", size, i, out.Len())
			}
		}
		t.Logf("size %d: %d of 8 runs failed", size, faults)
	}
}

// writeMapped releases every piece of the mapping it sealed, each only
// after Write returned it (the envelope no longer reads it), and all of
// them before it returns: the caller unmaps right after, and a release
// arriving later could drop pages of whatever is mapped there next. A
// failed Write releases nothing more.
func TestWriteMappedReleases(t *testing.T) {
	saved := releaseMapped
	defer func() { releaseMapped = saved }()
	var (
		mu       sync.Mutex
		released [][]byte
	)
	releaseMapped = func(b []byte) {
		mu.Lock()
		released = append(released, b)
		mu.Unlock()
	}
	savedChunk := mapChunk
	defer func() { mapChunk = savedChunk }()
	mapChunk = 1 << 20
	r, l, _ := setup(t)
	m := randBytes(2*mapChunk + 7)
	var ct bytes.Buffer
	w, err := envelope.NewWriter(bg, &ct, l, l.KeyName())
	if err != nil {
		t.Fatal(err)
	}
	rw := &recordingWriter{w: w}
	if n, err := r.writeMapped(rw, m); err != nil || n != int64(len(m)) {
		t.Fatalf("writeMapped: %d, %v", n, err)
	}
	mu.Lock()
	got := len(released)
	mu.Unlock()
	if got != 3 || len(rw.returned) != 3 {
		t.Fatalf("released %d pieces, Write returned %d, want 3 and 3", got, len(rw.returned))
	}
	for i, c := range released {
		if &c[0] != &rw.returned[i][0] || len(c) != len(rw.returned[i]) {
			t.Fatalf("piece %d released is not the piece Write returned", i)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := r.Decrypt(bg, &out, bytes.NewReader(ct.Bytes())); err != nil || !bytes.Equal(out.Bytes(), m) {
		t.Fatalf("round trip: %v", err)
	}

	// A Write that fails: its piece and the rest are not released.
	released = nil
	w, err = envelope.NewWriter(bg, io.Discard, l, l.KeyName())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fw := &recordingWriter{w: w, failAt: 1}
	if _, err := r.writeMapped(fw, m); err == nil {
		t.Fatal("writeMapped: no error from a failing Write")
	}
	if len(released) != 1 {
		t.Fatalf("released %d pieces after the second Write failed, want 1", len(released))
	}
}

// recordingWriter records each piece its Write returned (failing the
// failAt'th call when failAt > 0).
type recordingWriter struct {
	w        io.Writer
	returned [][]byte
	calls    int
	failAt   int
}

func (rw *recordingWriter) Write(p []byte) (int, error) {
	rw.calls++
	if rw.failAt > 0 && rw.calls > rw.failAt {
		return 0, errors.New("write failed")
	}
	n, err := rw.w.Write(p)
	if err == nil {
		rw.returned = append(rw.returned, p)
	}
	return n, err
}
