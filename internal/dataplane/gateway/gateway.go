package gateway

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wardproject/ward/internal/shared/netsource"
	"github.com/wardproject/ward/internal/shared/proxyproto"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// PeerIdentityNote is the access log's peer_identity field: the gateway
// cannot know who called, and says so.
const PeerIdentityNote = "unknown to the gateway: TLS passes through it unterminated; the inbound proxy's access log names the verified caller"

// Gateway is one `ward gateway`: its listener, routes, limits, metrics
// and admin endpoints.
type Gateway struct {
	cfg    *Config
	routes atomic.Pointer[routeTable]
	// catalog follows the agent's policy stream for the routes
	// (catalog_socket; catalog.go), nil with configured routes.
	catalog *catalogSource
	log     *slog.Logger
	access  *slog.Logger
	m       *metrics

	sem    chan struct{}
	limits *netsource.Limits
	// lastRefusalLog is when a refusal was last logged (UnixNano).
	lastRefusalLog atomic.Int64
	draining       atomic.Bool
	started        chan struct{}

	mu       sync.Mutex
	conns    map[*conn]struct{}
	addrs    map[string]net.Addr
	listener net.Listener
	closeFns []func()
	wg       sync.WaitGroup
}

// Option configures a Gateway.
type Option func(*Gateway)

// WithLogger sets the operational logger (default: JSON to stderr).
func WithLogger(l *slog.Logger) Option { return func(g *Gateway) { g.log = l } }

// WithAccessLog writes one JSON line per connection to w (overrides the
// config's access_log).
func WithAccessLog(w io.Writer) Option {
	return func(g *Gateway) { g.access = slog.New(slog.NewJSONHandler(w, nil)) }
}

// New applies defaults to cfg, checks it and prepares a Gateway; Run
// starts it.
func New(cfg *Config, opts ...Option) (*Gateway, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:     cfg,
		sem:     make(chan struct{}, cfg.MaxConnections),
		limits:  netsource.NewLimits(cfg.MaxConnectionsPerSource, cfg.MaxPendingPerSource),
		started: make(chan struct{}),
		conns:   map[*conn]struct{}{},
		addrs:   map[string]net.Addr{},
	}
	for _, o := range opts {
		o(g)
	}
	if g.log == nil {
		g.log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if g.access == nil {
		w, err := openAccessLog(cfg.AccessLog)
		if err != nil {
			return nil, err
		}
		g.access = slog.New(slog.NewJSONHandler(w, nil))
	}
	g.m = newMetrics()
	if cfg.CatalogSocket == "" {
		g.setRoutes(cfg.Routes)
	} else {
		cs, err := newCatalogSource(cfg.CatalogSocket, g.log)
		if err != nil {
			return nil, err
		}
		g.catalog = cs
	}
	return g, nil
}

func openAccessLog(dst string) (io.Writer, error) {
	switch dst {
	case "stderr":
		return os.Stderr, nil
	case "stdout":
		return os.Stdout, nil
	case "off":
		return io.Discard, nil
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access_log %s: %w (give a writable file, stderr, stdout or off)", dst, err)
	}
	return f, nil
}

// Started is closed once the listener accepts connections.
func (g *Gateway) Started() <-chan struct{} { return g.started }

// Addr returns the bound address of "listen" or "admin" (useful with port
// 0), or nil.
func (g *Gateway) Addr(name string) net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.addrs[name]
}

// Run starts the admin endpoint and the listener and serves until ctx is
// done; then it drains: the listener closes, /readyz fails, open
// connections get drain_timeout to finish before they are closed.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.closeAll()
	if g.cfg.AdminAddress != "" {
		if err := g.startAdmin(); err != nil {
			return err
		}
	}
	l, err := listen(g.cfg.Listen)
	if err != nil {
		return err
	}
	if g.catalog != nil {
		cctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); g.followCatalog(cctx) }()
		// Telemetry goes to the same agent, over the same connection.
		telDone := make(chan struct{})
		go func() {
			defer close(telDone)
			telemetry.Send(cctx, g.catalog.conn, telemetry.DefaultInterval, g.log, g.TelemetryReport)
		}()
		defer func() { cancel(); <-done; <-telDone }()
	}
	g.mu.Lock()
	g.listener = l
	g.addrs["listen"] = l.Addr()
	g.mu.Unlock()
	acceptDone := make(chan struct{})
	go func() { defer close(acceptDone); g.acceptLoop(l) }()
	close(g.started)
	var names []string
	for _, r := range g.table().list {
		names = append(names, r.sni+" -> "+r.Forward)
	}
	if g.catalog != nil {
		g.log.Info("gateway started; routes follow the services catalog", "listen", l.Addr().String(), "catalog_socket", g.cfg.CatalogSocket)
	} else {
		g.log.Info("gateway started", "listen", l.Addr().String(), "routes", names)
	}
	<-ctx.Done()
	g.drain()
	<-acceptDone
	return nil
}

func listen(addr string) (net.Listener, error) {
	network, a := splitAddr(addr)
	if network == "unix" {
		if fi, err := os.Lstat(a); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("listen %s: the path exists and is not a socket; remove it or choose another path", a)
			}
			_ = os.Remove(a)
		}
	}
	l, err := net.Listen(network, a)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// conn is one accepted connection: what is logged about it and what
// closes it.
type conn struct {
	id       string
	start    time.Time
	source   string
	key      string // per-source key ("" for none)
	pending  atomic.Bool
	route    *Route
	hello    *Hello
	outcome  string // forwarded (closed), refused, dial_failed, idle_timeout, error
	reason   string
	errText  string
	bytesIn  atomic.Int64
	bytesOut atomic.Int64

	mu      sync.Mutex
	closers []io.Closer
	closed  bool
}

func (c *conn) add(x io.Closer) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		x.Close()
		return
	}
	c.closers = append(c.closers, x)
	c.mu.Unlock()
}

func (c *conn) closeAll() {
	c.mu.Lock()
	cs := c.closers
	c.closers, c.closed = nil, true
	c.mu.Unlock()
	for _, x := range cs {
		x.Close()
	}
}

// helloDone ends the connection's pending slot of its source (once).
func (g *Gateway) helloDone(c *conn) {
	if c.key != "" && c.pending.CompareAndSwap(true, false) {
		g.limits.EndPending(c.key)
	}
}

// acceptLoop accepts under max_connections and the per-source limits,
// refusing (closing at once, counted) what is over a bound.
func (g *Gateway) acceptLoop(l net.Listener) {
	for {
		raw, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || g.draining.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			g.log.Error("accept failed", "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case g.sem <- struct{}{}:
		default:
			g.refuseAtAccept(raw, "", ReasonMaxConnections)
			continue
		}
		c := &conn{id: rand.Text(), start: time.Now(), source: raw.RemoteAddr().String(), closers: []io.Closer{raw}}
		if key := netsource.Key(raw.RemoteAddr()); key != "" {
			if r := g.limits.Acquire(key); r != netsource.Accepted {
				<-g.sem
				reason := ReasonPerSource
				if r == netsource.OverPending {
					reason = ReasonPerSourceHello
				}
				g.refuseAtAccept(raw, key, reason)
				continue
			}
			c.key = key
			c.pending.Store(true)
		}
		if !g.track(c) {
			g.helloDone(c)
			if c.key != "" {
				g.limits.Release(c.key)
			}
			<-g.sem
			g.refuseAtAccept(raw, c.key, ReasonDraining)
			continue
		}
		go func() {
			defer func() {
				c.closeAll()
				g.helloDone(c)
				if c.key != "" {
					g.limits.Release(c.key)
				}
				<-g.sem
				g.untrack(c)
			}()
			g.serve(c, raw)
		}()
	}
}

// refuseAtAccept closes a connection refused before it was read, counts
// it and logs the first refusal of every 10 s (a flood must not flood the
// log; the metric counts every one).
func (g *Gateway) refuseAtAccept(raw net.Conn, key, reason string) {
	raw.Close()
	g.m.refused.WithLabelValues(reason).Inc()
	now := time.Now().UnixNano()
	last := g.lastRefusalLog.Load()
	if now-last < int64(10*time.Second) || !g.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("refusing connections over a limit (further refusals counted in ward_gateway_refused_total, logged at most every 10s)",
		"source", key, "reason", reason, "max_connections", g.cfg.MaxConnections,
		"max_connections_per_source", g.cfg.MaxConnectionsPerSource, "max_pending_per_source", g.cfg.MaxPendingPerSource)
}

func (g *Gateway) track(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining.Load() {
		return false
	}
	g.conns[c] = struct{}{}
	g.wg.Add(1)
	return true
}

func (g *Gateway) untrack(c *conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
	g.wg.Done()
}

// serve reads the ClientHello, routes it and splices.
func (g *Gateway) serve(c *conn, raw net.Conn) {
	defer g.logAccess(c)
	raw.SetReadDeadline(c.start.Add(time.Duration(g.cfg.ClientHelloTimeout)))
	hello, err := ReadClientHello(raw, g.cfg.MaxClientHello)
	g.helloDone(c)
	if err != nil {
		var he *HelloError
		reason := ReasonMalformed
		if errors.As(err, &he) {
			reason = he.Reason
		}
		g.refuse(c, reason, err.Error())
		return
	}
	c.hello = hello
	if hello.ServerName == "" {
		g.refuse(c, ReasonNoSNI, "the ClientHello names no server (server_name extension absent): the gateway routes by SNI only")
		return
	}
	rt := g.table().bySNI[hello.ServerName]
	if rt == nil {
		g.refuse(c, ReasonUnknown, fmt.Sprintf("no route for server name %q: this gateway exports only %s", hello.ServerName, g.routeNames()))
		return
	}
	c.route = rt
	network, addr := splitAddr(rt.Forward)
	up, err := net.DialTimeout(network, addr, time.Duration(g.cfg.DialTimeout))
	if err != nil {
		g.m.refused.WithLabelValues(ReasonDialFailed).Inc()
		c.outcome, c.reason, c.errText = "dial_failed", ReasonDialFailed, fmt.Sprintf("route %s: dial %s: %v", rt.Service, rt.Forward, err)
		return
	}
	c.add(up)
	first := hello.Raw
	if rt.ProxyProtocol == ProxyProtocolV2 {
		hdr, err := proxyproto.AppendV2(nil, raw.RemoteAddr(), raw.LocalAddr(), proxyproto.TLV{Type: proxyproto.TLVUniqueID, Value: []byte(c.id)})
		if err != nil {
			c.outcome, c.errText = "error", err.Error()
			return
		}
		first = append(hdr, hello.Raw...)
	}
	up.SetWriteDeadline(time.Now().Add(time.Duration(g.cfg.DialTimeout)))
	if _, err := up.Write(first); err != nil {
		g.m.refused.WithLabelValues(ReasonDialFailed).Inc()
		c.outcome, c.reason, c.errText = "dial_failed", ReasonDialFailed, fmt.Sprintf("route %s: writing the ClientHello to %s: %v", rt.Service, rt.Forward, err)
		return
	}
	up.SetWriteDeadline(time.Time{})
	c.bytesIn.Add(int64(len(hello.Raw)))
	g.m.helloBytes.Observe(float64(len(hello.Raw)))
	g.m.helloSecond.Observe(time.Since(c.start).Seconds())
	g.m.total.WithLabelValues(rt.Service).Inc()
	open := g.m.open.WithLabelValues(rt.Service)
	open.Inc()
	defer open.Dec()
	c.outcome = "closed"
	err = splice(c, raw, up, time.Duration(g.cfg.IdleTimeout))
	g.m.bytes.WithLabelValues(rt.Service, "in").Add(float64(c.bytesIn.Load()))
	g.m.bytes.WithLabelValues(rt.Service, "out").Add(float64(c.bytesOut.Load()))
	switch {
	case errors.Is(err, errIdle):
		c.outcome = "idle_timeout"
	case err != nil && !g.draining.Load():
		c.errText = err.Error()
	}
}

func (g *Gateway) refuse(c *conn, reason, text string) {
	g.m.refused.WithLabelValues(reason).Inc()
	c.outcome, c.reason, c.errText = "refused", reason, text
}

func (g *Gateway) routeNames() string {
	var names []string
	for _, r := range g.table().list {
		names = append(names, r.sni)
	}
	if len(names) == 0 {
		return "no service"
	}
	return strings.Join(names, ", ")
}

// logAccess writes the connection's one access log line.
func (g *Gateway) logAccess(c *conn) {
	attrs := []slog.Attr{
		slog.String("id", c.id),
		slog.String("source", c.source),
		slog.String("outcome", c.outcome),
	}
	if c.reason != "" {
		attrs = append(attrs, slog.String("reason", c.reason))
	}
	if c.hello != nil {
		attrs = append(attrs, slog.String("sni", c.hello.ServerName), slog.Int("client_hello_bytes", len(c.hello.Raw)))
	}
	if c.route != nil {
		attrs = append(attrs, slog.String("route", c.route.Service), slog.String("forward", c.route.Forward))
	}
	attrs = append(attrs,
		slog.Int64("bytes_in", c.bytesIn.Load()),
		slog.Int64("bytes_out", c.bytesOut.Load()),
		slog.Float64("duration_ms", float64(time.Since(c.start).Microseconds())/1000),
		slog.String("peer_identity", PeerIdentityNote))
	if c.errText != "" {
		attrs = append(attrs, slog.String("error", c.errText))
	}
	g.access.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
}

var errIdle = errors.New("idle timeout")

type closeWriter interface{ CloseWrite() error }

// splice copies both ways between the caller a and the inbound proxy b
// until both directions end, one fails, or neither side sent a byte for
// idle. Each direction is an io.Copy between the sockets, which Linux
// runs as splice(2) (no copy through user space); its read deadline is
// renewed every idle/4 so that the bytes it moved are counted (last).
// A direction that ends cleanly half-closes the other side.
//
// Idleness is judged by a timer of the connection's own, not by the read
// deadlines (a direction blocked writing, its peer not reading, has none
// that could fire): every window, after idle without a byte either way
// both sides are closed. Without it, both sides sending and neither reading, or a caller
// that half-closed and stopped reading, held the connection for good
// (TestSpliceIdleWhenNeitherSideReads,
// TestSpliceIdleWhenTheClientHalfClosesAndStopsReading).
func splice(c *conn, a, b net.Conn, idle time.Duration) error {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	window := max(idle/4, time.Millisecond)
	errc := make(chan error, 2)
	var watch atomic.Pointer[time.Timer]
	var ended, fired atomic.Bool
	look := func() {
		if ended.Load() {
			return
		}
		if time.Since(time.Unix(0, last.Load())) >= idle {
			fired.Store(true)
			a.Close()
			b.Close()
			return
		}
		for watch.Load() == nil { // not stored yet
			runtime.Gosched()
		}
		watch.Load().Reset(window)
	}
	watch.Store(time.AfterFunc(window, look))
	defer func() {
		ended.Store(true)
		watch.Load().Stop()
	}()
	cp := func(dst, src net.Conn, n *atomic.Int64) {
		for {
			src.SetReadDeadline(time.Now().Add(window))
			k, err := io.Copy(dst, src)
			if k > 0 {
				n.Add(k)
				last.Store(time.Now().UnixNano())
			}
			switch {
			case err == nil:
				if cw, ok := dst.(closeWriter); ok {
					_ = cw.CloseWrite()
				}
				errc <- nil
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				continue // the deadline only lets last move; the timer judges idleness
			default:
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
			a.Close()
			b.Close()
		}
	}
	if fired.Load() {
		return errIdle
	}
	return first
}

func (g *Gateway) drain() {
	g.log.Info("draining: listener closed, waiting for open connections", "timeout", time.Duration(g.cfg.DrainTimeout).String())
	g.mu.Lock()
	g.draining.Store(true)
	l := g.listener
	g.mu.Unlock()
	if l != nil {
		l.Close()
	}
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(time.Duration(g.cfg.DrainTimeout)):
	}
	g.mu.Lock()
	n := len(g.conns)
	for c := range g.conns {
		c.closeAll()
	}
	g.mu.Unlock()
	g.log.Warn("drain timeout: closed the remaining connections", "count", n)
	<-done
}

func (g *Gateway) closeAll() {
	g.mu.Lock()
	l, fns := g.listener, g.closeFns
	g.closeFns = nil
	g.mu.Unlock()
	if l != nil {
		l.Close()
	}
	for _, f := range fns {
		f()
	}
}

// readiness reports whether the gateway should receive traffic and why
// not.
func (g *Gateway) readiness() (bool, string) {
	if g.draining.Load() {
		return false, "draining (shutting down)"
	}
	select {
	case <-g.started:
	default:
		return false, "starting"
	}
	if g.catalog != nil && !g.catalog.received.Load() {
		return false, "waiting for the services catalog on " + g.cfg.CatalogSocket + lastErr(g.catalog)
	}
	return true, fmt.Sprintf("ready: %d route(s): %s", len(g.table().list), g.routeNames())
}

func (g *Gateway) startAdmin() error {
	l, err := listen(g.cfg.AdminAddress)
	if err != nil {
		return fmt.Errorf("admin_address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := g.readiness()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", why)
			return
		}
		fmt.Fprintln(w, why)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	g.mu.Lock()
	g.addrs["admin"] = l.Addr()
	g.closeFns = append(g.closeFns, func() { srv.Close() })
	g.mu.Unlock()
	return nil
}
