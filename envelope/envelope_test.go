package envelope

import (
	"bytes"
	"context"
	"crypto/fips140"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/iotest"
)

var bg = context.Background()

func newKMS(t testing.TB) *LocalKMS {
	t.Helper()
	l, err := NewLocalKMS("test")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func seal(t testing.TB, kms KMS, pt []byte, opts ...Option) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(bg, &buf, kms, "local/test", opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func open(kms KMS, ct []byte, opts ...Option) ([]byte, error) {
	r, err := NewReader(bg, bytes.NewReader(ct), kms, opts...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

const seg = MinSegmentSize

func TestRoundTrip(t *testing.T) {
	kms := newKMS(t)
	sizes := []int{0, 1, seg - 1, seg, seg + 1, 3 * seg, 3*seg + 7, (1 << 20) + 5, 3 << 20}
	for _, alg := range []Alg{AES256GCM, ChaCha20Poly1305} {
		if alg == ChaCha20Poly1305 && fipsEnabled() {
			continue
		}
		for _, workers := range []int{1, 4} {
			for _, n := range sizes {
				pt := randBytes(n)
				opts := []Option{WithAlgorithm(alg), WithSegmentSize(seg), WithConcurrency(workers),
					WithClassification("confidential"), WithMetadata(map[string]string{"owner": "team-a", "path": "x/y z"})}
				ct := seal(t, kms, pt, opts...)
				nseg := max(1, (n+seg-1)/seg)
				h, err := ParseHeader(bytes.NewReader(ct))
				if err != nil {
					t.Fatal(err)
				}
				if want := h.Len + n + nseg*segTag; len(ct) != want {
					t.Fatalf("%s/%d/%d: ciphertext %d bytes, want %d", alg, workers, n, len(ct), want)
				}
				got, err := open(kms, ct, WithConcurrency(workers))
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("%s/%d/%d: open: %v (equal %v)", alg, workers, n, err, bytes.Equal(got, pt))
				}
				// One byte at a time through the reader and iotest.
				r, err := NewReader(bg, iotest.HalfReader(bytes.NewReader(ct)), kms, WithConcurrency(workers))
				if err != nil {
					t.Fatal(err)
				}
				if n < 2*seg {
					if err := iotest.TestReader(r, pt); err != nil {
						t.Fatalf("%s/%d/%d: %v", alg, workers, n, err)
					}
				}
				r.Close()
				// Writer fed through ReadFrom (io.Copy) gives the same plaintext.
				var buf bytes.Buffer
				w, _ := NewWriter(bg, &buf, kms, "local/test", opts...)
				if _, err := io.Copy(w, iotest.HalfReader(bytes.NewReader(pt))); err != nil {
					t.Fatal(err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if buf.Len() != len(ct) {
					t.Fatalf("ReadFrom: %d bytes, want %d", buf.Len(), len(ct))
				}
				if got, err := open(kms, buf.Bytes()); err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("ReadFrom round trip: %v", err)
				}
			}
		}
	}
}

func TestHeaderFields(t *testing.T) {
	kms := newKMS(t)
	meta := map[string]string{"b": "2", "a": "1", "owner": "ünïcode ok"}
	ct := seal(t, kms, []byte("hello"), WithClassification("restricted"), WithMetadata(meta), WithSegmentSize(1<<20))
	h, err := ParseHeader(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	if h.Alg != AES256GCM || h.SegmentSize != 1<<20 || h.Classification != "restricted" || h.KeyName != "local/test" ||
		h.KeyVersion != 1 || len(h.Metadata) != 3 || h.Metadata["owner"] != "ünïcode ok" || len(h.ObjectID) != 64 {
		t.Fatalf("header: %+v", h)
	}
	if !bytes.Equal(h.Encoded(), ct[:h.Len]) {
		t.Fatal("Encoded differs from the file's header")
	}
}

func TestInvalidOptions(t *testing.T) {
	kms := newKMS(t)
	cases := map[string][]Option{
		"segment too small": {WithSegmentSize(100)},
		"segment too large": {WithSegmentSize(MaxSegmentSize + 1)},
		"bad alg":           {WithAlgorithm(9)},
		"bad class":         {WithClassification("a b")},
		"bad meta key":      {WithMetadata(map[string]string{"a=b": "c"})},
		"control in value":  {WithMetadata(map[string]string{"a": "x\ny"})},
		"reserved context":  {WithContext(map[string]string{"ward.format": "x"})},
	}
	for name, opts := range cases {
		var buf bytes.Buffer
		if _, err := NewWriter(bg, &buf, kms, "local/test", opts...); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v", name, err)
		}
		if buf.Len() != 0 {
			t.Errorf("%s: wrote %d bytes", name, buf.Len())
		}
	}
	if _, err := NewWriter(bg, io.Discard, kms, "local/other"); err == nil {
		t.Error("wrong key name accepted")
	}
}

func TestReaderAt(t *testing.T) {
	kms := newKMS(t)
	for _, n := range []int{0, 1, seg, 5*seg + 3, 40 * seg} {
		pt := randBytes(n)
		ct := seal(t, kms, pt, WithSegmentSize(seg))
		ra, err := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms, WithConcurrency(3))
		if err != nil {
			t.Fatal(err)
		}
		if ra.Size() != int64(n) {
			t.Fatalf("size %d want %d", ra.Size(), n)
		}
		for _, r := range [][2]int{{0, n}, {1, n - 1}, {seg - 1, 2}, {n / 3, n / 2}, {n - 1, 1}, {0, 0}} {
			off, l := r[0], r[1]
			if off < 0 || l < 0 || off+l > n || (off >= n && l > 0) {
				continue
			}
			p := make([]byte, l)
			got, err := ra.ReadAt(p, int64(off))
			if err != nil && !(err == io.EOF && off+l == n) || got != l || !bytes.Equal(p, pt[off:off+l]) {
				t.Fatalf("n=%d ReadAt(%d,%d) = %d, %v", n, off, l, got, err)
			}
		}
		if n >= 3 {
			p := make([]byte, 10)
			got, err := ra.ReadAt(p, int64(n-3))
			if got != 3 || err != io.EOF {
				t.Fatalf("read past end: %d, %v", got, err)
			}
		}
		if err := iotest.TestReader(io.NewSectionReader(ra, 0, ra.Size()), pt); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReaderAtRejectsDamage(t *testing.T) {
	kms := newKMS(t)
	pt := randBytes(10 * seg)
	ct := seal(t, kms, pt, WithSegmentSize(seg))
	h, _ := ParseHeader(bytes.NewReader(ct))
	cs := segCT(seg)
	// Truncated at a segment boundary: rejected when opened.
	cut := ct[:h.Len+5*cs]
	if _, err := NewReaderAt(bg, bytes.NewReader(cut), int64(len(cut)), kms); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	// Flipped bit in segment 3: reads before it work, reads touching it fail
	// and return only bytes that verified.
	bad := bytes.Clone(ct)
	bad[h.Len+3*cs+10] ^= 1
	ra, err := NewReaderAt(bg, bytes.NewReader(bad), int64(len(bad)), kms, WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 6*seg)
	n, err := ra.ReadAt(p, seg)
	if !errors.Is(err, ErrSegmentAuth) || n != 2*seg || !bytes.Equal(p[:n], pt[seg:3*seg]) {
		t.Fatalf("ReadAt over bad segment: n=%d err=%v", n, err)
	}
	if bytes.Count(p[n:], []byte{0}) != len(p)-n {
		t.Fatal("unauthenticated bytes left in p")
	}
}

func TestRewrap(t *testing.T) {
	kms := newKMS(t)
	pt := randBytes(3*seg + 1)
	ct := seal(t, kms, pt, WithSegmentSize(seg), WithClassification("internal"), WithContext(map[string]string{"tenant": "a"}))
	if _, err := kms.Rotate(); err != nil {
		t.Fatal(err)
	}
	h, _ := ParseHeader(bytes.NewReader(ct))
	if _, err := Rewrap(bg, kms, h); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("rewrap without context: %v", err)
	}
	nh, err := Rewrap(bg, kms, h, WithContext(map[string]string{"tenant": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	if nh.KeyVersion != 2 || h.KeyVersion != 1 || nh.ObjectID != h.ObjectID {
		t.Fatalf("versions %d -> %d", h.KeyVersion, nh.KeyVersion)
	}
	out := append(nh.Encoded(), ct[h.Len:]...)
	got, err := open(kms, out, WithContext(map[string]string{"tenant": "a"}))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("after rewrap: %v", err)
	}
}

func TestLocalKMSFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.json")
	kms := newKMS(t)
	ct := seal(t, kms, []byte("x"))
	kms.Rotate()
	if err := kms.Save(path); err != nil {
		t.Fatal(err)
	}
	l2, err := LoadLocalKMS(path)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Latest() != 2 || l2.KeyName() != "local/test" {
		t.Fatalf("loaded %s v%d", l2.KeyName(), l2.Latest())
	}
	if got, err := open(l2, ct); err != nil || string(got) != "x" {
		t.Fatalf("open with loaded key: %v", err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadLocalKMS(path); err == nil {
		t.Fatal("world-readable key file accepted")
	}
	os.WriteFile(filepath.Join(dir, "junk"), []byte("{}"), 0o600)
	if _, err := LoadLocalKMS(filepath.Join(dir, "junk")); err == nil {
		t.Fatal("junk key file accepted")
	}
}

// TestFIPSMode re-runs the round trip in a child with GODEBUG=fips140=on:
// AES-256-GCM must work there and ChaCha20-Poly1305 must be refused.
func TestFIPSMode(t *testing.T) {
	if os.Getenv("WARD_ENVELOPE_FIPS_CHILD") == "1" {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("short")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^(TestFIPSChild|TestRoundTrip)$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on", "WARD_ENVELOPE_FIPS_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fips140=on child failed: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("fips child: ok")) {
		t.Fatalf("child did not run the FIPS checks:\n%s", out)
	}
}

func TestFIPSChild(t *testing.T) {
	if os.Getenv("WARD_ENVELOPE_FIPS_CHILD") != "1" {
		t.Skip("run by TestFIPSMode")
	}
	if !fipsEnabled() {
		t.Fatal("child is not in FIPS mode")
	}
	kms := newKMS(t)
	pt := randBytes(3*seg + 5)
	got, err := open(kms, seal(t, kms, pt, WithSegmentSize(seg)))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("AES-GCM in FIPS mode: %v", err)
	}
	if _, err := NewWriter(bg, io.Discard, kms, "local/test", WithAlgorithm(ChaCha20Poly1305)); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("chacha in FIPS mode: %v", err)
	}
	t.Log("fips child: ok")
}

func fipsEnabled() bool { return fips140.Enabled() }

func TestCancel(t *testing.T) {
	kms := newKMS(t)
	ctx, cancel := context.WithCancel(bg)
	w, err := NewWriter(ctx, io.Discard, kms, "local/test", WithSegmentSize(seg))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := w.Write(randBytes(3 << 20)); !errors.Is(err, context.Canceled) {
		t.Fatalf("write after cancel: %v", err)
	}
	if err := w.Close(); !errors.Is(err, context.Canceled) {
		t.Fatalf("close after cancel: %v", err)
	}
	ct := seal(t, kms, randBytes(4<<20))
	ctx, cancel = context.WithCancel(bg)
	r, err := NewReader(ctx, bytes.NewReader(ct), kms)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v", err)
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

// I/O errors on either side surface as errors, never as a clean end.
func TestIOErrors(t *testing.T) {
	kms := newKMS(t)
	w, err := NewWriter(bg, &failWriter{n: 2 << 20}, kms, "local/test", WithSegmentSize(seg))
	if err != nil {
		t.Fatal(err)
	}
	_, werr := w.Write(randBytes(8 << 20))
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("write error lost")
	}
	if _, err := NewWriter(bg, &failWriter{}, kms, "local/test"); err == nil {
		t.Fatal("header write error lost")
	}
	ct := seal(t, kms, randBytes(3<<20), WithSegmentSize(seg))
	r, err := NewReader(bg, iotest.TimeoutReader(bytes.NewReader(ct)), kms)
	if err == nil {
		_, err = io.Copy(io.Discard, r)
	}
	if !errors.Is(err, iotest.ErrTimeout) {
		t.Fatalf("read error: %v", err)
	}
}
