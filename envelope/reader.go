package envelope

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
)

// opener opens segments; shared by Reader and ReaderAt.
type opener struct {
	k   *keys
	seg int
	hl  int64 // header length: file offset of segment 0
}

// open authenticates and decrypts segment i (ciphertext ct) into dst,
// which must have room for len(ct)-16 bytes. On failure it works out the
// most precise reason: a truncated stream, a stream that goes on after its
// final segment, or a damaged/reordered/foreign segment.
func (o *opener) open(dst, ct []byte, i uint64, last bool) ([]byte, error) {
	var nb [12]byte
	if len(ct) < segTag {
		return nil, fmt.Errorf("%w: segment %d is %d bytes, shorter than its tag", ErrTruncated, i, len(ct))
	}
	pt, err := o.k.aead.Open(dst[:0], o.k.nonce(&nb, i, last), ct, nil)
	if err == nil {
		return pt, nil
	}
	off := o.hl + int64(i)*int64(segCT(o.seg))
	if _, err2 := o.k.aead.Open(dst[:0], o.k.nonce(&nb, i, !last), ct, nil); err2 == nil {
		if last {
			return nil, fmt.Errorf("%w: the input ends after segment %d (byte %d) but that segment is not the final one: the rest of the file is missing", ErrTruncated, i, off+int64(len(ct)))
		}
		return nil, fmt.Errorf("%w: segment %d (byte %d) is the final segment but more data follows it: data was appended or segments spliced", ErrTrailing, i, off)
	}
	if last && len(ct) < segCT(o.seg) {
		return nil, fmt.Errorf("%w: final segment %d (bytes %d..%d) was altered, or the file was cut short inside it", ErrSegmentAuth, i, off, off+int64(len(ct)))
	}
	return nil, fmt.Errorf("%w: segment %d (bytes %d..%d) was altered, moved, or comes from another file", ErrSegmentAuth, i, off, off+int64(len(ct)))
}

// Reader decrypts a stream. It releases plaintext only after the segment
// holding it has been authenticated, and returns an error (never io.EOF)
// if the stream is truncated, extended or altered.
type Reader struct {
	ctx      context.Context
	src      *bufio.Reader
	o        opener
	hdr      *Header
	per      int
	inflight int
	pool     *pool
	free     [][]byte
	pending  []*job
	cur      *job
	pos      int // read position in cur.out[:cur.ok]
	next     uint64
	eof      bool // src fully read
	err      error
}

// NewReader reads and authenticates the header from src (asking kms for
// the data key) and returns a Reader of the plaintext. Options used:
// WithContext, WithConcurrency.
func NewReader(ctx context.Context, src io.Reader, kms KMS, opts ...Option) (*Reader, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	h, err := ParseHeader(src)
	if err != nil {
		return nil, err
	}
	k, err := unwrap(ctx, h, kms, c)
	if err != nil {
		return nil, err
	}
	r := &Reader{ctx: ctx, src: bufio.NewReaderSize(src, 4096), o: opener{k: k, seg: h.SegmentSize, hl: int64(h.Len)}, hdr: h, per: batchSegments(h.SegmentSize)}
	r.inflight = 2 * c.workers
	if c.workers > 1 {
		r.pool = newPool(c.workers, r.openJob)
	}
	return r, nil
}

// Header returns the authenticated header.
func (r *Reader) Header() *Header { return r.hdr }

func (r *Reader) openJob(j *job) {
	cs := segCT(r.o.seg)
	nseg := (j.n + cs - 1) / cs
	for i := range nseg {
		ct := j.buf[i*cs : min(j.n, (i+1)*cs)]
		last := j.last && i == nseg-1
		pt, err := r.o.open(j.out[i*r.o.seg:], ct, j.first+uint64(i), last)
		if err != nil {
			j.err = err
			return
		}
		j.ok += len(pt)
	}
}

// readJob reads the next batch of ciphertext from src.
func (r *Reader) readJob() (*job, error) {
	cs := segCT(r.o.seg)
	var b []byte
	if n := len(r.free); n > 0 {
		b, r.free = r.free[n-1], r.free[:n-1]
	} else {
		b = make([]byte, r.per*cs+r.per*r.o.seg)
	}
	j := &job{buf: b[:r.per*cs], out: b[r.per*cs:], first: r.next, done: make(chan struct{})}
	n, err := io.ReadFull(r.src, j.buf)
	j.n = n
	switch {
	case err == nil:
		if _, perr := r.src.Peek(1); perr == io.EOF {
			j.last = true
		} else if perr != nil {
			return nil, fmt.Errorf("reading envelope: %w", perr)
		}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		j.last = true
		if n == 0 {
			if r.next == 0 {
				return nil, fmt.Errorf("%w: the header is complete but no segment follows", ErrTruncated)
			}
			return nil, fmt.Errorf("reading envelope: internal error: no data after a non-final batch")
		}
	default:
		return nil, fmt.Errorf("reading envelope: %w", err)
	}
	if j.last {
		r.eof = true
	}
	nseg := (n + cs - 1) / cs
	if r.next+uint64(nseg) > maxSegs {
		return nil, fmt.Errorf("%w: more than %d segments", ErrTrailing, uint64(maxSegs))
	}
	r.next += uint64(nseg)
	return j, nil
}

// fill keeps up to inflight batches being opened.
func (r *Reader) fill() error {
	for !r.eof && len(r.pending) < r.inflight {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		j, err := r.readJob()
		if err != nil {
			return err
		}
		if r.pool == nil {
			r.openJob(j)
			close(j.done)
		} else {
			r.pool.jobs <- j
		}
		r.pending = append(r.pending, j)
	}
	return nil
}

// advance makes cur the next opened batch; io.EOF when none is left.
func (r *Reader) advance() error {
	if r.cur != nil {
		if r.cur.err != nil {
			return r.cur.err
		}
		r.free = append(r.free, r.cur.buf[:cap(r.cur.buf)])
		r.cur = nil
	}
	if err := r.fill(); err != nil {
		return err
	}
	if len(r.pending) == 0 {
		return io.EOF
	}
	r.cur, r.pending = r.pending[0], r.pending[1:]
	<-r.cur.done
	r.pos = 0
	return nil
}

// Read returns authenticated plaintext.
func (r *Reader) Read(p []byte) (int, error) {
	for r.err == nil {
		if r.cur != nil && r.pos < r.cur.ok {
			n := copy(p, r.cur.out[r.pos:r.cur.ok])
			r.pos += n
			return n, nil
		}
		if err := r.advance(); err != nil {
			r.finish(err)
		}
	}
	return 0, r.err
}

// WriteTo writes all authenticated plaintext to w (io.Copy uses it).
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.err == nil {
		if r.cur != nil && r.pos < r.cur.ok {
			n, err := w.Write(r.cur.out[r.pos:r.cur.ok])
			r.pos += n
			total += int64(n)
			if err != nil {
				r.finish(err)
				return total, err
			}
			continue
		}
		if err := r.advance(); err != nil {
			r.finish(err)
		}
	}
	if r.err == io.EOF {
		return total, nil
	}
	return total, r.err
}

// finish records the terminal state and releases the workers.
func (r *Reader) finish(err error) {
	r.err = err
	for _, j := range r.pending {
		<-j.done
	}
	r.pending = nil
	if r.pool != nil {
		r.pool.stop()
		r.pool = nil
	}
	clear(r.o.k.hdrKey)
}

// Close releases the workers early (before EOF); it is safe to call at
// any time and more than once.
func (r *Reader) Close() error {
	if r.err == nil {
		r.finish(errors.New("envelope: read after Close"))
	}
	return nil
}
