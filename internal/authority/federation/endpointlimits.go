package federation

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/netsource"
)

// Resource limits of the bundle endpoint. Anyone who can reach it may
// connect (bundle fetches are anonymous), so what a connection may hold
// before and after authentication is bounded, as on the Node API and the
// proxy (package netsource: a source is an IPv4 address or an IPv6 /64):
//
//   - each listener accepts at most endpointMaxConns open connections, of
//     which at most endpointMaxPerSource from one source, of which at most
//     endpointMaxPendingPerSource pending (accepted but no request begun:
//     the TLS handshake and the wait for the first request's bytes, each
//     bounded by ReadHeaderTimeout). A connection over a bound is closed at
//     accept, before any TLS work, and counted (EndpointConfig.OnConnRefused);
//   - an authenticated peer (one federated trust domain, whichever sources
//     its authorities connect from) may hold at most maxLongPollsPerPeer
//     revocation long-polls and maxWitnessPerPeer witness requests at
//     once, and make at most peerRequestBurst requests in a row, then one
//     per peerRequestRefill (a long-poll asked with wait=0, or a witness
//     request, answers at once and can be repeated on a kept-alive
//     connection); more are answered 429 at once and counted as "busy".
//
// A peer's authority makes one long-poll and one witness request at a
// time, one bundle fetch now and then, each on its own connection; an HA
// authority of a few replicas behind one NAT stays well under the bounds.
const (
	endpointMaxConns            = 1024
	endpointMaxPerSource        = 32
	endpointMaxPendingPerSource = 8
	maxLongPollsPerPeer         = 8
	maxWitnessPerPeer           = 4
	// A peer's followers poll at most revocationBurst times in a row, then
	// once per revocationRefill, and witness once per
	// federation.witness_interval: a few replicas stay well under this.
	peerRequestBurst  = 60
	peerRequestRefill = 250 * time.Millisecond
)

// Reasons the bundle endpoint closes a connection at accept
// (EndpointConfig.OnConnRefused), and the reason a peer's request over its
// concurrency bound is counted with (OnRevocationRefused, OnWitnessRefused).
const (
	RefusedEndpointConns            = "max_connections"
	RefusedEndpointPerSource        = "per_source"
	RefusedEndpointPendingPerSource = "per_source_pending"
	RefusedBusy                     = "busy"
)

// limitListener applies the per-source and total connection bounds at
// accept.
type limitListener struct {
	net.Listener
	limits    *netsource.Limits
	sem       chan struct{}
	log       *slog.Logger
	onRefused func(string)
	lastWarn  atomic.Int64
}

func newLimitListener(ln net.Listener, log *slog.Logger, onRefused func(string)) *limitListener {
	return &limitListener{Listener: ln, limits: netsource.NewLimits(endpointMaxPerSource, endpointMaxPendingPerSource),
		sem: make(chan struct{}, endpointMaxConns), log: log, onRefused: onRefused}
}

// Accept returns the next connection within the bounds, closing (never
// queueing) those over one.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
		default:
			l.refuse(c, "", RefusedEndpointConns)
			continue
		}
		key := netsource.Key(c.RemoteAddr())
		if key != "" {
			if r := l.limits.Acquire(key); r != netsource.Accepted {
				<-l.sem
				reason := RefusedEndpointPerSource
				if r == netsource.OverPending {
					reason = RefusedEndpointPendingPerSource
				}
				l.refuse(c, key, reason)
				continue
			}
		}
		lc := &limitedConn{Conn: c, l: l, key: key}
		lc.pending.Store(key != "")
		return lc, nil
	}
}

// refuse closes c, counts it and logs the first refusal of every 10 s.
func (l *limitListener) refuse(c net.Conn, key, reason string) {
	if l.onRefused != nil {
		l.onRefused(reason) // before the close the client sees
	}
	c.Close()
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(10*time.Second) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.log.Warn("bundle endpoint: refusing connections over a limit (further refusals are logged at most every 10s)",
		"source", key, "reason", reason, "max_connections", endpointMaxConns,
		"max_per_source", endpointMaxPerSource, "max_pending_per_source", endpointMaxPendingPerSource)
}

// limitedConn gives its slots back when closed.
type limitedConn struct {
	net.Conn
	l       *limitListener
	key     string
	pending atomic.Bool
	once    sync.Once
}

func (c *limitedConn) endPending() {
	if c.pending.CompareAndSwap(true, false) {
		c.l.limits.EndPending(c.key)
	}
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.endPending()
		if c.key != "" {
			c.l.limits.Release(c.key)
		}
		<-c.l.sem
	})
	return err
}

// endpointConnState ends a connection's pending phase once its first
// request begins (http.Server.ConnState).
func endpointConnState(c net.Conn, s http.ConnState) {
	if s != http.StateActive {
		return
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if lc, ok := c.(*limitedConn); ok {
		lc.endPending()
	}
}

// peerSlots counts an authenticated peer's requests in progress, per trust
// domain and kind.
type peerSlots struct {
	mu     sync.Mutex
	n      map[peerSlotKey]int
	budget map[spiffeid.TrustDomain]*pollBudget
	now    func() time.Time // tests (default time.Now)
	// lastWarn is when a refused client was last logged as a warning.
	lastWarn time.Time
}

type peerSlotKey struct {
	td   spiffeid.TrustDomain
	kind string
}

// take counts one more request of kind for td, or reports false when td
// already has max in progress.
func (p *peerSlots) take(td spiffeid.TrustDomain, kind string, max int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = map[peerSlotKey]int{}
	}
	k := peerSlotKey{td, kind}
	if p.n[k] >= max {
		return false
	}
	if p.budget == nil {
		p.budget = map[spiffeid.TrustDomain]*pollBudget{}
	}
	b := p.budget[td]
	if b == nil {
		b = &pollBudget{burst: peerRequestBurst, refill: peerRequestRefill}
		p.budget[td] = b
	}
	now := time.Now
	if p.now != nil {
		now = p.now
	}
	if b.take(now()) > 0 {
		return false
	}
	p.n[k]++
	return true
}

func (p *peerSlots) give(td spiffeid.TrustDomain, kind string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := peerSlotKey{td, kind}
	if p.n[k] > 1 {
		p.n[k]--
	} else {
		delete(p.n, k)
	}
}

// logRefused logs a refused client of the revocation channel or the
// witness: at warning level at most once per 10 s (anyone can send
// requests without a certificate, as fast as it likes: the refusal
// counters count every one), at debug level otherwise.
func (e *Endpoint) logRefused(what, reason, remote, msg string) {
	now := time.Now
	e.slots.mu.Lock()
	if e.slots.now != nil {
		now = e.slots.now
	}
	t := now()
	warn := e.slots.lastWarn.IsZero() || t.Sub(e.slots.lastWarn) >= 10*time.Second
	if warn {
		e.slots.lastWarn = t
	}
	e.slots.mu.Unlock()
	lvl := slog.LevelDebug
	if warn {
		lvl = slog.LevelWarn
	}
	e.cfg.Log.Log(context.Background(), lvl, what+": client refused (further refusals within 10s are logged at debug level)", "reason", reason, "remote", remote, "err", msg)
}

// peerSlot takes one of td's slots of kind for the request, or answers 429
// (counted as RefusedBusy) and reports false.
func (e *Endpoint) peerSlot(w http.ResponseWriter, r *http.Request, td spiffeid.TrustDomain, what, kind string, max int, count func(string)) bool {
	if e.slots.take(td, kind, max) {
		return true
	}
	if count != nil {
		count(RefusedBusy)
	}
	e.cfg.Log.Debug(what+": client refused: too many requests of its trust domain in progress or in a row", "trust_domain", td.Name(), "remote", r.RemoteAddr, "max", max)
	w.Header().Set("Retry-After", "5")
	http.Error(w, "too many requests of trust domain "+td.Name()+" in progress or in a row; retry later", http.StatusTooManyRequests)
	return false
}
