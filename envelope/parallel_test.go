package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

// Large writes in pieces that do not line up with jobs are still sealed
// in place: only the job at each piece's start (or end) is copied.
func TestWriteChunksSealInPlace(t *testing.T) {
	kms := newKMS(t)
	pt := randBytes(9<<20 + 123)
	for _, workers := range []int{2, 4} {
		for _, chunk := range []int{3<<20 + 5, 1<<20 - 1, 2 << 20, 5 << 20} {
			var buf bytes.Buffer
			w, err := NewWriter(bg, &buf, kms, "local/test", WithConcurrency(workers))
			if err != nil {
				t.Fatal(err)
			}
			pieces := 0
			for p := pt; len(p) > 0; pieces++ {
				c := p[:min(len(p), chunk)]
				if _, err := w.Write(c); err != nil {
					t.Fatal(err)
				}
				p = p[len(c):]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if limit := int64(2 * pieces * w.capacity()); w.copied > limit {
				t.Errorf("workers %d, pieces of %d: %d bytes copied, want at most %d", workers, chunk, w.copied, limit)
			}
			if got, err := open(kms, buf.Bytes()); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("workers %d, pieces of %d: round trip: %v", workers, chunk, err)
			}
		}
	}
}

// ReadFrom an *io.SectionReader: the workers read their segments with
// ReadAt; the result is the same file as a plain stream gives (same
// length, same plaintext), from any start offset, and the section ends
// read to its end.
func TestReadFromSection(t *testing.T) {
	kms := newKMS(t)
	defer func(b int) { batchBytes = b }(batchBytes)
	batchBytes = 2 * seg // jobs of two segments: many jobs in flight
	capacity := 2 * seg
	for _, workers := range []int{1, 3} {
		for _, n := range []int{0, 1, seg, capacity - 1, capacity, capacity + 1, 3 * capacity, 7*capacity + 7} {
			for _, start := range []int{0, 5} {
				pt := randBytes(start + n)
				sr := io.NewSectionReader(bytes.NewReader(pt), 0, int64(len(pt)))
				sr.Seek(int64(start), io.SeekStart)
				var buf bytes.Buffer
				w, err := NewWriter(bg, &buf, kms, "local/test", WithSegmentSize(seg), WithConcurrency(workers))
				if err != nil {
					t.Fatal(err)
				}
				got, err := w.ReadFrom(sr)
				if err != nil || got != int64(n) {
					t.Fatalf("workers %d, %d bytes: ReadFrom = %d, %v", workers, n, got, err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if pos, _ := sr.Seek(0, io.SeekCurrent); pos != int64(len(pt)) {
					t.Errorf("section left at %d, want its end %d", pos, len(pt))
				}
				if want := w.Header().Len + n + max(1, (n+seg-1)/seg)*segTag; buf.Len() != want {
					t.Fatalf("workers %d, %d bytes: %d bytes of ciphertext, want %d", workers, n, buf.Len(), want)
				}
				if out, err := open(kms, buf.Bytes()); err != nil || !bytes.Equal(out, pt[start:]) {
					t.Fatalf("workers %d, %d bytes from %d: round trip: %v", workers, n, start, err)
				}
			}
		}
	}
}

// shrinking is an io.ReaderAt whose data ends early: a file truncated
// while it is encrypted.
type shrinking struct {
	b   []byte
	cut int64
}

func (s *shrinking) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.cut {
		return 0, io.EOF
	}
	n := copy(p, s.b[off:min(int64(len(s.b)), s.cut)])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// An input that shrinks under the parallel readers fails the Writer: no
// final segment is written, so what reached dst never decrypts.
func TestReadFromSectionShrinks(t *testing.T) {
	kms := newKMS(t)
	pt := randBytes(8 << 20)
	for _, cut := range []int64{0, 1 << 20, 3<<20 + 17} {
		var buf bytes.Buffer
		w, _ := NewWriter(bg, &buf, kms, "local/test", WithConcurrency(3))
		_, err := w.ReadFrom(io.NewSectionReader(&shrinking{pt, cut}, 0, int64(len(pt))))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if _, err := open(kms, buf.Bytes()); err == nil {
			t.Fatalf("cut at %d: the partial output decrypts", cut)
		}
	}
}

// An input that shrinks only in its last job's part (after the parallel
// readers had all they asked for: the cut at the start of the final job,
// or its last byte) fails too: the final segment is never sealed short or
// empty (an output that looks written and never decrypts).
func TestReadFromSectionShrinksInTail(t *testing.T) {
	kms := newKMS(t)
	pt := randBytes(8 << 20)
	for _, workers := range []int{2, 3} {
		probe, _ := NewWriter(bg, io.Discard, kms, "local/test", WithConcurrency(workers))
		c := int64(probe.capacity())
		probe.Close()
		tail := int64(len(pt)) - (int64(len(pt))-1)/c*c
		for _, cut := range []int64{int64(len(pt)) - tail, int64(len(pt)) - tail + 1, int64(len(pt)) - 1} {
			var buf bytes.Buffer
			w, _ := NewWriter(bg, &buf, kms, "local/test", WithConcurrency(workers))
			_, err := w.ReadFrom(io.NewSectionReader(&shrinking{pt, cut}, 0, int64(len(pt))))
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("workers %d, cut at %d (final job from %d): %v", workers, cut, int64(len(pt))-tail, err)
			}
			if _, err := open(kms, buf.Bytes()); err == nil {
				t.Fatalf("workers %d, cut at %d: the partial output decrypts", workers, cut)
			}
		}
	}
}

// WriteTo, with segments opened in parallel (every segment its own
// batch), round-trips and refuses the attacks on the order and length of
// the segments, releasing at most the authenticated segments before the
// damage.
func TestWriteToParallel(t *testing.T) {
	kms := newKMS(t)
	defer func(b int) { batchBytes = b }(batchBytes)
	batchBytes = seg
	writeTo := func(ct []byte) ([]byte, error) {
		ra, err := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms, WithConcurrency(4))
		if err != nil {
			return nil, err
		}
		var out bytes.Buffer
		_, err = ra.WriteTo(&out)
		return out.Bytes(), err
	}
	for _, n := range []int{0, 1, seg, 5*seg + 3, 40 * seg} {
		pt := randBytes(n)
		got, err := writeTo(seal(t, kms, pt, WithSegmentSize(seg)))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
	const nseg = 12
	pt := randBytes(nseg*seg - 10)
	ct := seal(t, kms, pt, WithSegmentSize(seg))
	h, _ := ParseHeader(bytes.NewReader(ct))
	cs := segCT(seg)
	at := func(b []byte, i int) []byte { return b[h.Len+i*cs : min(len(b), h.Len+(i+1)*cs)] }
	for _, c := range []struct {
		name  string
		bad   []byte
		want  []error
		first int // first bad segment: at most the segments before it are released
	}{
		{"swapped segments 3 and 8", func() []byte {
			b := bytes.Clone(ct)
			s3, s8 := bytes.Clone(at(b, 3)), bytes.Clone(at(b, 8))
			copy(at(b, 3), s8)
			copy(at(b, 8), s3)
			return b
		}(), []error{ErrSegmentAuth}, 3},
		{"truncated last segment", ct[:len(ct)-1], []error{ErrSegmentAuth}, nseg - 1},
		{"last segment dropped", ct[:h.Len+(nseg-1)*cs], []error{ErrTruncated}, 0},
		{"appended byte", append(bytes.Clone(ct), 0), []error{ErrTrailing, ErrSegmentAuth}, 0},
		{"appended segment", append(bytes.Clone(ct), at(ct, 0)...), []error{ErrTrailing, ErrSegmentAuth}, 0},
		{"flipped bit in segment 6", func() []byte { b := bytes.Clone(ct); at(b, 6)[100] ^= 1; return b }(), []error{ErrSegmentAuth}, 6},
	} {
		got, err := writeTo(c.bad)
		if !isOneOf(err, c.want...) {
			t.Errorf("%s: %v, want one of %v", c.name, err, c.want)
		}
		if len(got) > c.first*seg || !bytes.Equal(got, pt[:len(got)]) {
			t.Errorf("%s: released %d bytes", c.name, len(got))
		}
	}
}

// BenchmarkReaderAtWriteTo is the CLI's decrypt path for files: segments
// read with ReadAt and opened in parallel, written in order.
func BenchmarkReaderAtWriteTo(b *testing.B) {
	kms := newKMS(b)
	ct := seal(b, kms, randBytes(benchSize))
	b.SetBytes(benchSize)
	for b.Loop() {
		ra, err := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ra.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSegmentAESGCM is the ceiling the aims are measured against:
// Go's AES-256-GCM sealing and opening one 64 KiB segment, hot in cache,
// on one core (times the cores for the machine's ceiling). MB/cpu-s is
// the same per second of CPU time, which a busy machine does not lower.
func BenchmarkSegmentAESGCM(b *testing.B) {
	k, err := deriveKeys(&Header{Alg: AES256GCM}, make([]byte, DataKeySize))
	if err != nil {
		b.Fatal(err)
	}
	const s = DefaultSegmentSize
	var nb [12]byte
	nonce := k.nonce(&nb, 7, false)
	buf := make([]byte, s+segTag)
	ct := k.aead.Seal(nil, nonce, buf[:s], nil)
	for _, op := range []string{"seal", "open"} {
		b.Run(fmt.Sprintf("%s/seg=%dK", op, s>>10), func(b *testing.B) {
			b.SetBytes(s)
			c0 := cpuSeconds()
			for b.Loop() {
				if op == "seal" {
					k.aead.Seal(buf[:0], nonce, buf[:s], nil)
				} else if _, err := k.aead.Open(buf[:0], nonce, ct, nil); err != nil {
					b.Fatal(err)
				}
			}
			if c := cpuSeconds() - c0; c > 0 {
				b.ReportMetric(float64(b.N)*s/1e6/c, "MB/cpu-s")
			}
		})
	}
}
