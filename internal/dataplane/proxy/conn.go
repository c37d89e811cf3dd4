package proxy

import (
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproject/ward/internal/shared/netsource"
	"github.com/wardproject/ward/internal/shared/policy"
)

// connState is one proxied connection: what is logged about it, what can
// close it, and (inbound) the request its policy decision was made for.
type connState struct {
	id       string // correlation id
	listener string
	inbound  bool
	start    time.Time
	client   string // remote address of the connecting side (the original source behind a gateway's PROXY v2 header)
	via      string // accept_proxy_v2: the gateway's address the connection came through
	viaID    string // accept_proxy_v2: the gateway's connection id (its access log's id)
	// service: outbound listeners naming a service, the service@cluster
	// reached and how many clusters failed before it.
	service   string
	failovers int

	mu      sync.Mutex
	closers []io.Closer
	closed  bool

	req        policy.Request
	decision   policy.Decision
	decided    bool
	authorized atomic.Bool
	revoked    atomic.Pointer[policy.Decision]

	tlsVersion string
	resumed    bool   // the handshake resumed a session
	outcome    string // handshake_failed, denied, dial_failed, closed, ...
	errText    string
	bytesIn    atomic.Int64
	bytesOut   atomic.Int64

	// Per-source accounting (inbound TCP listeners): src is the key the
	// connection counts under in limits; handshaking is true until
	// handshakeDone.
	limits      *netsource.Limits
	src         string
	handshaking atomic.Bool
}

// handshakeDone releases the connection's pre-handshake slot of its
// source (max_handshakes_per_source); it may be called more than once.
func (c *connState) handshakeDone() {
	if c.limits != nil && c.handshaking.CompareAndSwap(true, false) {
		c.limits.EndPending(c.src)
	}
}

// Reasons a connection is refused at accept (label of
// ward_proxy_connections_rejected_total).
const (
	rejectMaxConnections  = "max_connections"
	rejectPerSource       = "per_source"
	rejectPerSourceShakes = "per_source_handshakes"
	rejectDraining        = "draining"
)

// Inbound TCP connections count against their source's limits
// (netsource.Limits: max_connections_per_source open, of which
// max_handshakes_per_source still in their TLS handshake), so one host
// cannot take every slot of max_connections or hold them with connections
// that never present a certificate. The source is always the real TCP
// peer's, except on listeners behind a gateway (accept_proxy_v2): there
// every connection comes from the gateway, so each is counted, once its
// PROXY header is read, under the original source the header names
// (acquireGatewaySource).

func newConnState(listener string, inbound bool, raw net.Conn) *connState {
	return &connState{id: rand.Text(), listener: listener, inbound: inbound, start: time.Now(), client: raw.RemoteAddr().String(),
		closers: []io.Closer{raw}}
}

// add registers x to be closed with the connection (at once if it already
// is closed).
func (c *connState) add(x io.Closer) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		x.Close()
		return
	}
	c.closers = append(c.closers, x)
	c.mu.Unlock()
}

func (c *connState) closeAll() {
	c.mu.Lock()
	cs := c.closers
	c.closers, c.closed = nil, true
	c.mu.Unlock()
	for _, x := range cs {
		x.Close()
	}
}

// revoke closes a connection the current policy denies.
func (c *connState) revoke(d policy.Decision) {
	c.revoked.Store(&d)
	c.closeAll()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

type closeWriter interface{ CloseWrite() error }

// pipe copies both ways between the connecting side a and the other side b
// until both directions end, an error occurs, or neither side sent a byte
// for idle. A direction that ends cleanly half-closes the other side.
//
// The data path is what a bare crypto/tls forwarder does and no more: one
// goroutine per direction, blocked in Read on its own pooled 32 KiB
// buffer, writing what each Read returned at once (one TLS record, one
// write syscall per message; no channel, no extra goroutine, no copy
// beyond TLS's own), plus one atomic add per Read for the byte counters.
// In particular nothing per Read asks for the time (time.Now costs
// ~120 ns here, two per Read before) or sets a deadline.
//
// The idle timeout is kept by a timer of the connection's own, not by
// the copying goroutines: every idle/8 it looks whether the byte counters
// (both directions) moved; after idle without a byte either way (closed
// between idle and idle + idle/8 after the last byte) both sides are
// closed, which ends each direction's Read or Write. A watch kept by Read
// deadlines misses a direction blocked in Write (its peer stopped reading,
// the socket buffers full): a client that keeps sending to a server that
// never reads (TestPipeIdleWhenTheServerStopsReading), both sides sending
// and neither reading (TestPipeIdleWhenNeitherSideReads), or a client that
// half-closed and stopped reading while the server answers
// (TestPipeIdleWhenTheClientHalfClosesAndStopsReading) held the connection,
// its buffers and goroutines for good. A live connection costs one timer
// wake-up per idle/8, none per message.
func pipe(c *connState, a, b net.Conn, idle time.Duration) error {
	errc := make(chan error, 2)
	w := &idleWatch{c: c, a: a, b: b, idle: idle, step: max(idle/8, time.Millisecond)}
	w.start()
	defer w.stop()
	cp := func(dst, src net.Conn, n *atomic.Int64) {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf := *bp
		src.SetReadDeadline(time.Time{}) // none left from the handshake
		for {
			r, err := src.Read(buf)
			if r > 0 {
				if _, werr := dst.Write(buf[:r]); werr != nil {
					errc <- werr
					return
				}
				n.Add(int64(r))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					if cw, ok := dst.(closeWriter); ok {
						_ = cw.CloseWrite()
					}
					errc <- nil
					return
				}
				errc <- err
				return
			}
		}
	}
	go cp(b, a, &c.bytesIn)
	go cp(a, b, &c.bytesOut)
	var first error
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			if first == nil {
				first = err
			}
			// unblock the other direction
			a.Close()
			b.Close()
		}
	}
	if w.fired.Load() {
		return errIdle
	}
	return first
}

// idleWatch closes a pipe's two sides once neither moved a byte for idle,
// looking every step (a time.AfterFunc: no goroutine between looks).
type idleWatch struct {
	c          *connState
	a, b       net.Conn
	idle, step time.Duration

	t     atomic.Pointer[time.Timer]
	done  atomic.Bool // pipe returned: no further look
	fired atomic.Bool // closed as idle
	// seen: both counters at the last look; quiet: the time since without
	// a byte either way, in steps (atomics: successive looks run on
	// different goroutines).
	seen, quiet atomic.Int64
}

func (w *idleWatch) start() {
	w.seen.Store(w.c.bytesIn.Load() + w.c.bytesOut.Load())
	w.t.Store(time.AfterFunc(w.step, w.look))
}

func (w *idleWatch) stop() {
	w.done.Store(true)
	if t := w.t.Load(); t != nil {
		t.Stop()
	}
}

func (w *idleWatch) look() {
	if w.done.Load() {
		return
	}
	if now := w.c.bytesIn.Load() + w.c.bytesOut.Load(); now != w.seen.Load() {
		w.seen.Store(now)
		w.quiet.Store(0)
	} else if w.quiet.Add(int64(w.step)) >= int64(w.idle) {
		w.fired.Store(true)
		w.a.Close()
		w.b.Close()
		return
	}
	for w.t.Load() == nil { // start has not stored the timer yet
		runtime.Gosched()
	}
	w.t.Load().Reset(w.step)
}

var errIdle = errors.New("idle timeout")

// acquireGatewaySource counts a connection of a listener with
// accept_proxy_v2 against the per-source limits of the original source its
// gateway named (src, from the PROXY header), which acceptLoop could not
// know. The gateway bounds each source only until it has read the
// ClientHello; without this, one caller could hold up to the gateway's
// max_connections_per_source TLS handshakes open here (a ClientHello, then
// silence), instead of max_handshakes_per_source. A refused connection is
// counted in ward_proxy_connections_rejected_total and logged; false then.
func (p *Proxy) acquireGatewaySource(c *connState, src net.Addr) bool {
	key := netsource.Key(src)
	if key == "" || c.limits != nil {
		return true
	}
	if r := p.srcLimits.Acquire(key); r != netsource.Accepted {
		reason := rejectPerSource
		if r == netsource.OverPending {
			reason = rejectPerSourceShakes
		}
		p.m.rejected.WithLabelValues(c.listener, reason).Inc()
		p.warnRefusal(c.listener, key, reason)
		c.outcome, c.errText = "rejected", reason+": the original source "+key+" (PROXY header of the gateway) is over its per-source limit"
		return false
	}
	c.limits, c.src = p.srcLimits, key
	c.handshaking.Store(true)
	return true
}
