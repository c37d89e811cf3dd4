package envelope

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
)

// job is one batch of consecutive segments sealed or opened together.
type job struct {
	buf   []byte      // sealing: plaintext at i*(S+16), sealed in place
	src   []byte      // sealing: plaintext borrowed from the caller (sealed into buf)
	ra    io.ReaderAt // sealing: read the plaintext from ra at raOff first
	raOff int64
	sent  bool   // handed to the workers (done will be closed)
	out   []byte // opening: plaintext, contiguous
	n     int    // sealing: plaintext bytes; opening: ciphertext bytes
	first uint64 // index of the first segment
	last  bool   // holds the final segment
	done  chan struct{}
	ok    int   // opening: plaintext bytes that verified
	err   error // first failure (opening; sealing: reading ra)
	res   []byte
}

// pool runs jobs on a bounded set of goroutines.
type pool struct {
	jobs chan *job
	wg   sync.WaitGroup
}

func newPool(workers int, run func(*job)) *pool {
	p := &pool{jobs: make(chan *job, workers)}
	for range workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			// The caller's memory (Write's p) may be a mapped file that
			// shrinks under us: a fault becomes the job's error.
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			for j := range p.jobs {
				func() {
					defer recoverFault(&j.err)
					run(j)
				}()
				close(j.done)
			}
		}()
	}
	return p
}

func (p *pool) stop() {
	close(p.jobs)
	p.wg.Wait()
}

// Writer encrypts a stream. Create it with NewWriter; Close writes the
// final segment and must be called.
type Writer struct {
	ctx      context.Context
	dst      io.Writer
	k        *keys
	seg      int
	per      int // segments per job
	inflight int
	workers  int
	pool     *pool
	free     [][]byte
	pending  []*job
	cur      *job
	next     uint64
	err      error
	closed   bool
	hdr      *Header
	copied   int64 // plaintext bytes Write copied rather than sealed in place (tests)
}

// NewWriter writes an envelope header to dst and returns a Writer whose
// plaintext is sealed segment by segment under a fresh data key from kms
// (wrapped by keyName). Nothing is written to dst if an error is returned.
func NewWriter(ctx context.Context, dst io.Writer, kms KMS, keyName string, opts ...Option) (*Writer, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if c.alg == ChaCha20Poly1305 {
		if _, err := deriveKeys(&Header{Alg: c.alg}, make([]byte, DataKeySize)); err != nil {
			return nil, err
		}
	}
	h := &Header{Format: FormatV1, Alg: c.alg, SegmentSize: c.segSize, Classification: c.classification, Metadata: c.meta}
	if h.Metadata == nil {
		h.Metadata = map[string]string{}
	}
	rand.Read(h.salt[:])
	rand.Read(h.prefix[:])
	h.ObjectID = fmt.Sprintf("%x", h.salt[:])
	dk, wrapped, err := kms.GenerateDataKey(ctx, keyName, h.kmsContext(c.extCtx))
	if err != nil {
		return nil, fmt.Errorf("generating a data key under key %q: %w", keyName, err)
	}
	defer clear(dk)
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, fmt.Errorf("%w: the KMS returned a %d-byte wrapped key (limit %d)", ErrInvalid, len(wrapped), MaxWrappedKey)
	}
	h.wrapped = wrapped
	k, err := deriveKeys(h, dk)
	if err != nil {
		return nil, err
	}
	h.tag = k.headerTag(h, c.extCtx)
	h.encode()
	// Round-trip through the parser so every header we write parses.
	ph, err := parseRaw(h.raw)
	if err != nil {
		return nil, fmt.Errorf("the KMS returned a wrapped key this format cannot hold: %w", err)
	}
	if _, err := dst.Write(h.raw); err != nil {
		return nil, fmt.Errorf("writing envelope header: %w", err)
	}
	w := &Writer{ctx: ctx, dst: dst, k: k, seg: c.segSize, per: batchSegments(c.segSize), workers: c.workers, hdr: ph}
	w.inflight = 2 * c.workers
	if c.workers > 1 {
		w.pool = newPool(c.workers, w.seal)
	}
	return w, nil
}

// Header returns the header written to dst.
func (w *Writer) Header() *Header { return w.hdr }

func (w *Writer) capacity() int { return w.per * w.seg }

func (w *Writer) newJob() *job {
	var b []byte
	if n := len(w.free); n > 0 {
		b, w.free = w.free[n-1], w.free[:n-1]
	} else {
		b = make([]byte, w.per*segCT(w.seg))
	}
	return &job{buf: b, first: w.next, done: make(chan struct{})}
}

// slot returns the free space of the current segment in the current job.
func (w *Writer) slot() []byte {
	j := w.cur
	i, off := j.n/w.seg, j.n%w.seg
	base := i * segCT(w.seg)
	return j.buf[base+off : base+w.seg]
}

// seal seals a job's segments in place.
func (w *Writer) seal(j *job) {
	var nb [12]byte
	nseg := (j.n + w.seg - 1) / w.seg
	if nseg == 0 {
		nseg = 1 // the empty final segment of an empty stream
	}
	out := 0
	for i := range nseg {
		l := min(w.seg, j.n-i*w.seg)
		base := i * segCT(w.seg)
		last := j.last && i == nseg-1
		in := j.buf[base : base+l]
		if j.src != nil {
			in = j.src[i*w.seg : i*w.seg+l]
		}
		if j.ra != nil {
			if n, err := j.ra.ReadAt(in, j.raOff+int64(i*w.seg)); n < l {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				j.err = fmt.Errorf("reading the input at byte %d: %w (did it shrink while it was encrypted?)", j.raOff+int64(i*w.seg)+int64(n), err)
				return
			}
		}
		w.k.aead.Seal(j.buf[base:base], w.k.nonce(&nb, j.first+uint64(i), last), in, nil)
		out = base + l + segTag
	}
	j.res = j.buf[:out]
}

// submit hands the current job to the workers and writes out finished
// jobs, in order, once too many are in flight.
func (w *Writer) submit(last bool) error {
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("encryption stopped: %w", err)
	}
	j := w.cur
	w.cur = nil
	j.last = last
	nseg := max(1, (j.n+w.seg-1)/w.seg)
	if j.first+uint64(nseg) > maxSegs {
		return fmt.Errorf("%w: more than %d segments; use a larger segment size", ErrTooLarge, uint64(maxSegs))
	}
	w.next = j.first + uint64(nseg)
	if w.pool == nil {
		w.seal(j)
		close(j.done)
	} else {
		w.pool.jobs <- j
	}
	j.sent = true
	w.pending = append(w.pending, j)
	for len(w.pending) > w.inflight || (last && len(w.pending) > 0) {
		if err := w.flushOne(); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) flushOne() error {
	j := w.pending[0]
	<-j.done
	w.pending = w.pending[1:]
	w.free = append(w.free, j.buf)
	if j.err != nil {
		return j.err
	}
	_, err := w.dst.Write(j.res)
	if err != nil {
		return fmt.Errorf("writing encrypted segments: %w", err)
	}
	return nil
}

// Write encrypts p. Segments are released to dst in order as they seal.
//
// p may be a memory-mapped file: if reading it faults (the file shrank)
// in a sealing goroutine, or in the caller's when it has
// debug.SetPanicOnFault on, Write fails with ErrInputFault and so does
// the Writer from then on (Close writes no final segment).
func (w *Writer) Write(p []byte) (total int, err error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("envelope: write after Close")
	}
	defer w.failOnFault(&err)
	// Large writes: whole jobs are sealed straight from p (no copy); more
	// of p follows each, so none of them holds the final segment. Write
	// waits until they are sealed, so p is not retained. A write that
	// starts inside a job fills that job first by copying.
	var borrowed []*job
	defer func() {
		for _, j := range borrowed {
			if j.sent {
				<-j.done
			}
			j.src = nil
		}
	}()
	for len(p) > 0 {
		if w.cur != nil && w.cur.n == w.capacity() {
			// Full, and more of p follows: it does not hold the final segment.
			if err := w.submit(false); err != nil {
				w.fail(err)
				return total, err
			}
		}
		if w.pool != nil && (w.cur == nil || w.cur.n == 0) && len(p) > w.capacity() {
			if w.cur == nil {
				w.cur = w.newJob()
			}
			w.cur.src, w.cur.n = p[:w.capacity()], w.capacity()
			borrowed = append(borrowed, w.cur)
			if err := w.submit(false); err != nil {
				w.cur = nil
				w.fail(err)
				return total, err
			}
			p = p[w.capacity():]
			total += w.capacity()
			continue
		}
		// Copy into the current job; once it is full and more of p
		// follows, it is submitted above and large remainders borrow again.
		if w.cur == nil {
			w.cur = w.newJob()
		}
		n := copy(w.slot(), p)
		w.cur.n += n
		w.copied += int64(n)
		p = p[n:]
		total += n
	}
	return total, nil
}

// sizedReaderAt is what ReadFrom reads in parallel: *io.SectionReader.
type sizedReaderAt interface {
	io.ReaderAt
	io.Seeker
	Size() int64
}

// ReadFrom encrypts everything r yields, reading straight into segment
// buffers (io.Copy uses it). If r is an *io.SectionReader (anything with
// ReadAt, Seek and Size), the sealing goroutines read their segments from
// it themselves with ReadAt, in parallel (an *os.File under it is safe
// for that), and r ends positioned at its end; r is not used after
// ReadFrom returns.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("envelope: write after Close")
	}
	var total int64
	// tail: the bytes a section input still holds for the final job after
	// readFromAt (its size was fixed when it started). Reaching EOF
	// before them means the input shrank: an error, as in the parallel
	// readers, never a final segment sealed short or empty.
	tail, size := int64(-1), int64(0)
	if sr, ok := r.(sizedReaderAt); ok && w.pool != nil && (w.cur == nil || w.cur.n == 0) {
		n, rest, err := w.readFromAt(sr)
		total += n
		if err != nil {
			w.fail(err)
			return total, err
		}
		tail, size = rest, sr.Size()
	}
	eof := func() (int64, error) {
		if tail > 0 {
			err := fmt.Errorf("reading the input at byte %d: %w (did it shrink while it was encrypted?)", size-tail, io.ErrUnexpectedEOF)
			w.fail(err)
			return total, err
		}
		return total, nil
	}
	for {
		if w.cur != nil && w.cur.n == w.capacity() {
			// Only submit a full job once more data exists: the final
			// segment must carry the last flag.
			nj := w.newJob()
			n, err := io.ReadFull(r, nj.buf[:1])
			if n == 0 {
				w.free = append(w.free, nj.buf)
				if err == io.EOF {
					return eof()
				}
				w.fail(err)
				return total, err
			}
			if err := w.submit(false); err != nil {
				w.fail(err)
				return total, err
			}
			nj.first = w.next
			nj.n = 1
			w.cur = nj
			total++
			tail--
		}
		if w.cur == nil {
			w.cur = w.newJob()
		}
		n, err := r.Read(w.slot())
		w.cur.n += n
		total += int64(n)
		tail -= int64(n)
		if err == io.EOF {
			return eof()
		}
		if err != nil {
			w.fail(err)
			return total, err
		}
	}
}

// readFromAt submits every whole job of sr but the last one (which holds
// the final segment: ReadFrom's loop reads it) as jobs the workers read
// with ReadAt, and waits until they have read. rest is what sr holds
// after them (what the final job must get).
func (w *Writer) readFromAt(sr sizedReaderAt) (total, rest int64, err error) {
	pos, err := sr.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, 0, err
	}
	var read []*job
	defer func() {
		for _, j := range read {
			if j.sent {
				<-j.done
			}
			j.ra = nil
		}
	}()
	capacity := int64(w.capacity())
	for sr.Size()-pos > capacity {
		if w.cur == nil {
			w.cur = w.newJob()
		}
		w.cur.ra, w.cur.raOff, w.cur.n = sr, pos, int(capacity)
		read = append(read, w.cur)
		if err := w.submit(false); err != nil {
			w.cur = nil
			return total, 0, err
		}
		pos += capacity
		total += capacity
	}
	_, err = sr.Seek(pos, io.SeekStart)
	return total, sr.Size() - pos, err
}

// failOnFault, deferred by Write, turns a memory fault while copying p
// into the Writer's error.
func (w *Writer) failOnFault(err *error) {
	r := recover()
	if r == nil {
		return
	}
	f, ok := r.(interface{ Addr() uintptr })
	if !ok {
		panic(r)
	}
	*err = fmt.Errorf("%w: fault at address %#x (was a memory-mapped input file truncated while it was read?)", ErrInputFault, f.Addr())
	w.fail(*err)
}

func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// Close seals the final segment, writes everything out and stops the
// workers. It does not close dst.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err == nil {
		if w.cur == nil {
			w.cur = w.newJob()
		}
		w.fail(w.submit(true))
	}
	for _, j := range w.pending {
		<-j.done
	}
	w.pending = nil
	if w.pool != nil {
		w.pool.stop()
	}
	clear(w.k.hdrKey)
	return w.err
}
