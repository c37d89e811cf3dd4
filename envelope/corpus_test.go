package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

// decryptBoth decrypts ct with the streaming Reader (collecting what it
// released before failing) and with the ReaderAt; both must agree.
func decryptBoth(t *testing.T, kms KMS, ct []byte, opts ...Option) (released []byte, err error) {
	t.Helper()
	var out bytes.Buffer
	r, err := NewReader(bg, bytes.NewReader(ct), kms, append([]Option{WithConcurrency(3)}, opts...)...)
	if err == nil {
		_, err = io.Copy(&out, r)
	}
	ra, err2 := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms, opts...)
	if err2 == nil {
		p := make([]byte, ra.Size())
		_, err2 = ra.ReadAt(p, 0)
		if err2 == io.EOF {
			err2 = nil
		}
	}
	if (err == nil) != (err2 == nil) {
		t.Fatalf("Reader says %v, ReaderAt says %v", err, err2)
	}
	// The parallel in-order path (ReaderAt.WriteTo, what the CLI uses for
	// files), with the usual batches (a bad segment inside a batch) and
	// with every segment its own batch, so several are opened at once:
	// the same verdict as ReadAt, and it releases no more than the Reader
	// did (a prefix of whole authenticated segments).
	defer func(b int) { batchBytes = b }(batchBytes)
	for _, b := range []int{batchBytes, seg} {
		batchBytes = b
		var par bytes.Buffer
		ra, err3 := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms, append([]Option{WithConcurrency(4)}, opts...)...)
		if err3 == nil {
			_, err3 = ra.WriteTo(&par)
		}
		if (err2 == nil) != (err3 == nil) || err2 != nil && err2.Error() != err3.Error() {
			t.Fatalf("batch %d: ReaderAt.ReadAt says %v, ReaderAt.WriteTo says %v", b, err2, err3)
		}
		if !bytes.HasPrefix(out.Bytes(), par.Bytes()) || err3 == nil && !bytes.Equal(par.Bytes(), out.Bytes()) {
			t.Fatalf("batch %d: WriteTo released %d bytes, the Reader %d (not a prefix)", b, par.Len(), out.Len())
		}
	}
	return out.Bytes(), err
}

// isOneOf reports whether err wraps one of targets.
func isOneOf(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func TestBadInputCorpus(t *testing.T) {
	kms := newKMS(t)
	const nseg = 5
	pt := randBytes(nseg*seg - 100) // last segment shorter
	opts := []Option{WithSegmentSize(seg), WithClassification("confidential"), WithMetadata(map[string]string{"owner": "a", "team": "b"})}
	ct := seal(t, kms, pt, opts...)
	h, err := ParseHeader(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	H, cs := h.Len, segCT(seg)
	segAt := func(b []byte, i int) []byte { return b[H+i*cs : min(len(b), H+(i+1)*cs)] }
	other := seal(t, kms, randBytes(nseg*seg), opts...) // same key, another file
	oh, _ := ParseHeader(bytes.NewReader(other))

	// checkPrefix: what the Reader released before failing is plaintext of
	// whole segments that came before the bad one.
	checkPrefix := func(name string, got []byte, badSeg int) {
		t.Helper()
		if len(got) > badSeg*seg || !bytes.Equal(got, pt[:len(got)]) || len(got)%seg != 0 {
			t.Errorf("%s: released %d bytes before failing at segment %d", name, len(got), badSeg)
		}
	}

	// Header regions and the errors a flip inside each must cause.
	type region struct {
		name     string
		from, to int
		want     []error
	}
	wkStart := H - tagSize - len(h.wrapped)
	regions := []region{
		{"magic", 0, 4, []error{ErrNotEnvelope}},
		{"format version", 4, 5, []error{ErrUnsupported}},
		{"algorithm", 5, 6, []error{ErrUnsupported, ErrHeaderAuth}},
		{"header length", 6, 10, []error{ErrMalformed, ErrTruncated}},
		{"segment size", 10, 14, []error{ErrMalformed, ErrHeaderAuth}},
		{"salt", 14, 46, []error{ErrUnwrap}}, // the salt is the object id in the KMS context
		{"nonce prefix", 46, 53, []error{ErrHeaderAuth}},
		{"classification", 53, 54 + len(h.Classification), []error{ErrMalformed, ErrUnwrap}},
		{"metadata", 54 + len(h.Classification), wkStart - 2, []error{ErrMalformed, ErrUnwrap}},
		{"wrapped key length", wkStart - 2, wkStart, []error{ErrMalformed}},
		{"wrapped key", wkStart, H - tagSize, []error{ErrMalformed, ErrUnwrap}},
		{"header tag", H - tagSize, H, []error{ErrHeaderAuth}},
	}
	for _, rg := range regions {
		for i := rg.from; i < rg.to; i++ {
			for _, bit := range []byte{0x01, 0x80} {
				bad := bytes.Clone(ct)
				bad[i] ^= bit
				got, err := decryptBoth(t, kms, bad)
				if !isOneOf(err, rg.want...) {
					t.Errorf("flip %#x at byte %d (%s): err = %v, want one of %v", bit, i, rg.name, err, rg.want)
				}
				if len(got) != 0 {
					t.Errorf("flip in %s released %d bytes", rg.name, len(got))
				}
			}
		}
	}

	for i := 0; i < nseg; i++ {
		for _, pos := range []int{0, segTag, len(segAt(ct, i)) - 1} {
			bad := bytes.Clone(ct)
			segAt(bad, i)[pos] ^= 0x04
			got, err := decryptBoth(t, kms, bad)
			if !errors.Is(err, ErrSegmentAuth) || !bytes.Contains([]byte(err.Error()), []byte(fmt.Sprintf("segment %d ", i))) {
				t.Errorf("flip in segment %d: %v", i, err)
			}
			checkPrefix("segment flip", got, i)
		}
	}

	t.Run("truncation", func(t *testing.T) {
		for k := 0; k < nseg; k++ {
			got, err := decryptBoth(t, kms, ct[:H+k*cs])
			if !errors.Is(err, ErrTruncated) {
				t.Errorf("cut after %d segments: %v", k, err)
			}
			checkPrefix("cut", got, k)
		}
		for _, n := range []int{1, 3, 4, 9, 10, H - 1} {
			if _, err := decryptBoth(t, kms, ct[:n]); !errors.Is(err, ErrTruncated) {
				t.Errorf("cut inside header at %d: %v", n, err)
			}
		}
		got, err := decryptBoth(t, kms, ct[:len(ct)-1])
		if !errors.Is(err, ErrSegmentAuth) {
			t.Errorf("cut inside last segment: %v", err)
		}
		checkPrefix("cut in last", got, nseg-1)
	})

	t.Run("reorder", func(t *testing.T) {
		for i := 0; i < nseg-1; i++ {
			for j := i + 1; j < nseg-1; j++ { // full segments: same size
				bad := bytes.Clone(ct)
				a, b := bytes.Clone(segAt(bad, i)), bytes.Clone(segAt(bad, j))
				copy(segAt(bad, i), b)
				copy(segAt(bad, j), a)
				got, err := decryptBoth(t, kms, bad)
				if !errors.Is(err, ErrSegmentAuth) {
					t.Errorf("swap %d,%d: %v", i, j, err)
				}
				checkPrefix("swap", got, i)
			}
		}
		// Duplicate a segment.
		dup := append(append(bytes.Clone(ct[:H+2*cs]), segAt(ct, 1)...), ct[H+2*cs:]...)
		if _, err := decryptBoth(t, kms, dup); !errors.Is(err, ErrSegmentAuth) {
			t.Errorf("duplicated segment: %v", err)
		}
		// Final segment followed by more data.
		for _, extra := range [][]byte{{0}, segAt(ct, 0), segAt(ct, nseg-1)} {
			bad := append(bytes.Clone(ct), extra...)
			if _, err := decryptBoth(t, kms, bad); !isOneOf(err, ErrTrailing, ErrSegmentAuth) {
				t.Errorf("appended %d bytes: %v", len(extra), err)
			}
		}
		// The final segment of a file moved to the end of a shorter cut.
		full := seal(t, kms, pt[:nseg*seg-seg], opts...) // exactly 4 full segments
		fh, _ := ParseHeader(bytes.NewReader(full))
		mid := append(bytes.Clone(full), full[fh.Len:fh.Len+cs]...)
		if _, err := decryptBoth(t, kms, mid); !errors.Is(err, ErrTrailing) {
			t.Errorf("data after the final segment: %v", err)
		}
	})

	t.Run("splice between files", func(t *testing.T) {
		for i := 0; i < nseg-1; i++ {
			bad := bytes.Clone(ct)
			copy(segAt(bad, i), other[oh.Len+i*cs:oh.Len+(i+1)*cs])
			got, err := decryptBoth(t, kms, bad)
			if !errors.Is(err, ErrSegmentAuth) {
				t.Errorf("segment %d from another file: %v", i, err)
			}
			checkPrefix("splice", got, i)
		}
		// Header of another file in front of this body.
		bad := append(bytes.Clone(other[:oh.Len]), ct[H:]...)
		got, err := decryptBoth(t, kms, bad)
		if !errors.Is(err, ErrSegmentAuth) || len(got) != 0 {
			t.Errorf("foreign header: %v", err)
		}
		// Wrapped key of another file in this header.
		if len(oh.wrapped) == len(h.wrapped) {
			bad := bytes.Clone(ct)
			copy(bad[wkStart:], oh.wrapped)
			if _, err := decryptBoth(t, kms, bad); !errors.Is(err, ErrUnwrap) {
				t.Errorf("foreign wrapped key: %v", err)
			}
		}
	})

	t.Run("wrong key and context", func(t *testing.T) {
		if _, err := decryptBoth(t, newKMS(t), ct); !errors.Is(err, ErrUnwrap) {
			t.Errorf("wrong key: %v", err)
		}
		withCtx := seal(t, kms, pt, append(opts, WithContext(map[string]string{"tenant": "a"}))...)
		for _, c := range []map[string]string{nil, {"tenant": "b"}, {"tenant": "a", "x": "y"}} {
			if _, err := decryptBoth(t, kms, withCtx, WithContext(c)); !errors.Is(err, ErrUnwrap) {
				t.Errorf("context %v: %v", c, err)
			}
		}
		if got, err := decryptBoth(t, kms, withCtx, WithContext(map[string]string{"tenant": "a"})); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("right context: %v", err)
		}
	})

	t.Run("empty and junk", func(t *testing.T) {
		if _, err := decryptBoth(t, kms, nil); !errors.Is(err, ErrNotEnvelope) {
			t.Errorf("empty: %v", err)
		}
		if _, err := decryptBoth(t, kms, []byte("hello, world: not encrypted at all")); !errors.Is(err, ErrNotEnvelope) {
			t.Errorf("plaintext: %v", err)
		}
		if _, err := decryptBoth(t, kms, ct[:H]); !errors.Is(err, ErrTruncated) {
			t.Errorf("header only: %v", err)
		}
	})
}

// A ciphertext opens to at most one plaintext: the header tag commits to
// the data key, so the same bytes under another data key are rejected
// before any segment is opened.
func TestKeyCommitment(t *testing.T) {
	kms := newKMS(t)
	ct := seal(t, kms, []byte("attack at dawn"))
	h, _ := ParseHeader(bytes.NewReader(ct))
	k, err := deriveKeys(h, randBytes(DataKeySize))
	if err != nil {
		t.Fatal(err)
	}
	if tag := k.headerTag(h, nil); bytes.Equal(tag[:], h.tag[:]) {
		t.Fatal("header tag does not depend on the data key")
	}
}

func FuzzParseHeader(f *testing.F) {
	kms := newKMS(f)
	f.Add(seal(f, kms, []byte("x"), WithClassification("c"), WithMetadata(map[string]string{"a": "b"})))
	f.Add([]byte("wENV\x01\x01\x00\x00\x00\x60"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(bytes.NewReader(b))
		if err != nil {
			if !isOneOf(err, ErrNotEnvelope, ErrUnsupported, ErrMalformed, ErrTruncated) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if !bytes.Equal(h.Encoded(), b[:h.Len]) {
			t.Fatal("Encoded differs from input")
		}
		h2, err := parseRaw(h.Encoded())
		if err != nil || h2.KeyName != h.KeyName || h2.SegmentSize != h.SegmentSize || len(h2.Metadata) != len(h.Metadata) {
			t.Fatalf("reparse: %v", err)
		}
		// Re-encoding the parsed fields gives the same bytes (canonical).
		h2.encode()
		if !bytes.Equal(h2.raw, b[:h.Len]) {
			t.Fatal("header encoding is not canonical")
		}
	})
}

func FuzzDecrypt(f *testing.F) {
	kms := newKMS(f)
	pt := randBytes(3*seg + 11)
	ct := seal(f, kms, pt, WithSegmentSize(seg), WithClassification("c"))
	f.Add(ct, uint16(0), byte(0), uint16(len(ct)))
	f.Add(ct, uint16(100), byte(1), uint16(len(ct)))
	f.Add(ct, uint16(2000), byte(0x80), uint16(len(ct)-5))
	f.Fuzz(func(t *testing.T, in []byte, pos uint16, x byte, cut uint16) {
		b := bytes.Clone(in)
		if len(b) > 0 {
			b[int(pos)%len(b)] ^= x
		}
		b = b[:min(len(b), int(cut))]
		r, err := NewReader(bg, bytes.NewReader(b), kms, WithConcurrency(2))
		var got []byte
		if err == nil {
			got, err = io.ReadAll(r)
		}
		if err == nil && !bytes.Equal(got, pt) && bytes.Equal(in, ct) {
			t.Fatal("a modified ciphertext decrypted to a different plaintext")
		}
		if err == nil && bytes.Equal(in, ct) && !bytes.Equal(b, ct) {
			t.Fatal("a modified ciphertext was accepted")
		}
		if err != nil && (len(got) > len(pt) || !bytes.Equal(got, pt[:len(got)])) {
			t.Fatal("released plaintext that is not a prefix of the original")
		}
		// The parallel path for files: the same verdict, no more released.
		var par bytes.Buffer
		ra, perr := NewReaderAt(bg, bytes.NewReader(b), int64(len(b)), kms, WithConcurrency(2))
		if perr == nil {
			_, perr = ra.WriteTo(&par)
		}
		if (err == nil) != (perr == nil) {
			t.Fatalf("Reader says %v, ReaderAt.WriteTo says %v", err, perr)
		}
		if !bytes.HasPrefix(got, par.Bytes()) {
			t.Fatal("WriteTo released plaintext the Reader did not")
		}
	})
}
