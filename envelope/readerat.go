package envelope

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ReaderAt gives random access to the plaintext of an envelope stored in
// an io.ReaderAt. Each ReadAt authenticates every segment it touches; the
// final segment is authenticated when the ReaderAt is created, so a
// truncated or extended file is rejected up front. Safe for concurrent use.
type ReaderAt struct {
	ctx     context.Context
	src     io.ReaderAt
	o       opener
	hdr     *Header
	size    int64 // plaintext size
	nseg    uint64
	lastCT  int
	workers int
	bufs    sync.Pool
}

// NewReaderAt opens the envelope in src (size bytes long). Options used:
// WithContext, WithConcurrency. ctx also bounds WriteTo.
func NewReaderAt(ctx context.Context, src io.ReaderAt, size int64, kms KMS, opts ...Option) (*ReaderAt, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	h, err := ParseHeader(io.NewSectionReader(src, 0, size))
	if err != nil {
		return nil, err
	}
	body := size - int64(h.Len)
	if body <= 0 {
		return nil, fmt.Errorf("%w: the header is complete but no segment follows", ErrTruncated)
	}
	k, err := unwrap(ctx, h, kms, c)
	if err != nil {
		return nil, err
	}
	cs := int64(segCT(h.SegmentSize))
	n := (body + cs - 1) / cs
	if n > maxSegs {
		return nil, fmt.Errorf("%w: more than %d segments", ErrTrailing, uint64(maxSegs))
	}
	ra := &ReaderAt{ctx: ctx, src: src, o: opener{k: k, seg: h.SegmentSize, hl: int64(h.Len)}, hdr: h, nseg: uint64(n), workers: c.workers}
	ra.lastCT = int(body - (n-1)*cs)
	ra.size = body - n*segTag
	ra.bufs.New = func() any { b := make([]byte, 2*cs); return &b }
	// Authenticate the final segment now: it fixes the plaintext size.
	bp := ra.bufs.Get().(*[]byte)
	defer ra.bufs.Put(bp)
	if _, err := ra.segment((*bp)[:cs], (*bp)[cs:], n-1); err != nil {
		return nil, err
	}
	if ra.size < 0 || (n > 1 && ra.lastCT == segTag) {
		return nil, fmt.Errorf("%w: final segment is empty", ErrMalformed)
	}
	return ra, nil
}

// Header returns the authenticated header.
func (ra *ReaderAt) Header() *Header { return ra.hdr }

// Size returns the plaintext size.
func (ra *ReaderAt) Size() int64 { return ra.size }

// segment reads and opens segment i into out.
func (ra *ReaderAt) segment(ct, out []byte, i int64) ([]byte, error) {
	cs := int64(segCT(ra.o.seg))
	l := cs
	last := uint64(i) == ra.nseg-1
	if last {
		l = int64(ra.lastCT)
	}
	off := int64(ra.hdr.Len) + i*cs
	n, err := ra.src.ReadAt(ct[:l], off)
	if int64(n) < l {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: segment %d ends early at byte %d: the file shrank while it was read", ErrTruncated, i, off+int64(n))
		}
		return nil, fmt.Errorf("reading segment %d: %w", i, err)
	}
	return ra.o.open(out, ct[:l], uint64(i), last)
}

// ReadAt reads len(p) plaintext bytes from offset off. Large reads open
// segments in parallel.
func (ra *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("envelope: negative offset %d", off)
	}
	if off >= ra.size {
		if len(p) == 0 && off == ra.size {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	if rem := ra.size - off; int64(len(want)) > rem {
		want = want[:rem]
	}
	seg := int64(ra.o.seg)
	first, lastSeg := off/seg, (off+int64(len(want))-1)/seg
	count := lastSeg - first + 1
	workers := min(int64(ra.workers), count)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failAt = int64(-1)
		ferr   error
	)
	per := (count + workers - 1) / workers
	for w := int64(0); w < workers; w++ {
		lo, hi := first+w*per, min(first+(w+1)*per, lastSeg+1)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			bp := ra.bufs.Get().(*[]byte)
			defer ra.bufs.Put(bp)
			cs := segCT(ra.o.seg)
			ct, scratch := (*bp)[:cs], (*bp)[cs:]
			for i := lo; i < hi; i++ {
				segStart := i * seg
				// Where this segment's plaintext lands in want.
				a, b := max(segStart, off), min(segStart+seg, off+int64(len(want)))
				dst := want[a-off : b-off]
				var err error
				if a == segStart && int64(len(dst)) == seg {
					_, err = ra.segment(ct, dst, i) // straight into p
				} else {
					var pt []byte
					pt, err = ra.segment(ct, scratch, i)
					if err == nil {
						copy(dst, pt[a-segStart:])
					}
				}
				if err != nil {
					mu.Lock()
					if failAt < 0 || i < failAt {
						failAt, ferr = i, err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if ferr != nil {
		// Only the bytes before the first bad segment are authenticated.
		n := max(0, failAt*seg-off)
		clear(want[n:])
		return int(n), ferr
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

// WriteTo writes the whole plaintext to w, in order (io.WriterTo). The
// segments are read (one ReadAt each) and opened by up to WithConcurrency
// goroutines at once, a batch of them ahead of w; each batch reaches w
// only after every segment in it authenticated. On a bad segment w has
// received exactly the plaintext before it, and the error says which
// segment failed. src is not used after WriteTo returns.
func (ra *ReaderAt) WriteTo(w io.Writer) (int64, error) {
	seg, cs := ra.o.seg, segCT(ra.o.seg)
	per := uint64(batchSegments(seg))
	nb := (ra.nseg + per - 1) / per
	var total int64
	batch := int(min(per, ra.nseg))
	err := ordered(ra.ctx, ra.workers, int(nb), batch*(seg+cs), func(k int, buf []byte) ([]byte, error) {
		first := uint64(k) * per
		end := min(first+per, ra.nseg)
		out, ct := buf[:batch*seg], buf[batch*seg:]
		// One ReadAt for the whole batch, then each segment opened.
		l := int64(end-first) * int64(cs)
		if end == ra.nseg {
			l += int64(ra.lastCT - cs)
		}
		off := int64(ra.hdr.Len) + int64(first)*int64(cs)
		if n, err := ra.src.ReadAt(ct[:l], off); int64(n) < l {
			if err == nil || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: segment %d ends early at byte %d: the file shrank while it was read", ErrTruncated, first+uint64(n)/uint64(cs), off+int64(n))
			}
			return nil, fmt.Errorf("reading segments %d..%d: %w", first, end-1, err)
		}
		o := 0
		for i := first; i < end; i++ {
			c := ct[int(i-first)*cs : min(int(l), int(i-first+1)*cs)]
			pt, err := ra.o.open(out[o:], c, i, i == ra.nseg-1)
			if err != nil {
				return out[:o], err
			}
			o += len(pt)
		}
		return out[:o], nil
	}, func(p []byte) error {
		n, err := w.Write(p)
		total += int64(n)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		return err
	})
	return total, err
}
