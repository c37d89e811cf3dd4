package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/shared/netsource"
	"github.com/wardproject/ward/internal/shared/policy"
)

// X509Source is what the proxy needs from the Workload API: the current
// SVID and the trust bundles. *workloadapi.X509Source (go-spiffe) is one;
// it follows rotations, so every new handshake uses the newest material.
type X509Source interface {
	x509svid.Source
	x509bundle.Source
}

// Proxy is one `ward proxy`: its inbound and outbound listeners, policy
// engine, metrics and admin endpoints.
type Proxy struct {
	cfg    *Config
	src    X509Source
	engine *policy.Engine
	psrc   PolicySource
	log    *slog.Logger
	access *slog.Logger
	m      *metrics

	sem       chan struct{}
	srcLimits *netsource.Limits
	// lastRefusalLog is when warnRefusal last logged (UnixNano).
	lastRefusalLog atomic.Int64
	srcReady       atomic.Bool // p.src is set (the admin endpoint may read it)
	// waitReason is what keeps the proxy from its first SVID (workload.go),
	// for /readyz; waitDiagnosis is when to say it (DefaultWaitDiagnosis).
	waitReason    atomic.Pointer[string]
	waitDiagnosis time.Duration
	// policyErr is the last policy load error since the last good load.
	policyErr atomic.Pointer[string]
	draining  atomic.Bool
	started   chan struct{}

	mu        sync.Mutex
	conns     map[*connState]struct{}
	addrs     map[string]net.Addr
	listeners []net.Listener
	closeFns  []func()
	drainFns  []func()
	wg        sync.WaitGroup

	inboundTLS *tls.Config
	// certs: the handshake certificate of the current SVID; chains: peer
	// chains verified, by chain and bundle (verify.go), with their hit
	// and miss counts.
	certs                  certCache
	chains                 *chainCache
	chainHits, chainMisses atomic.Int64
	// Session resumption (session.go; nil when off): inbound ticket keys
	// and the outbound session cache.
	tickets  *ticketKeys
	sessions *sessionCache
}

// updater is an X509Source that notifies its updates (go-spiffe's
// workloadapi.X509Source): session resumption needs it (session.go).
type updater interface{ Updated() <-chan struct{} }

// Option configures a Proxy.
type Option func(*Proxy)

// WithLogger sets the operational logger (default: JSON to stderr).
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// WithAccessLog writes one JSON line per connection to w (overrides the
// config's access_log).
func WithAccessLog(w io.Writer) Option {
	return func(p *Proxy) { p.access = slog.New(slog.NewJSONHandler(w, nil)) }
}

// WithPolicySource replaces the configured policy files with src (the node
// agent's policy stream, or tests).
func WithPolicySource(src PolicySource) Option { return func(p *Proxy) { p.psrc = src } }

// WithWaitDiagnosis sets how long the proxy waits for its first X509-SVID
// before it logs what is missing (default DefaultWaitDiagnosis).
func WithWaitDiagnosis(d time.Duration) Option { return func(p *Proxy) { p.waitDiagnosis = d } }

// WithX509Source uses src instead of connecting to workload_api_socket.
func WithX509Source(src X509Source) Option { return func(p *Proxy) { p.src = src } }

// New applies defaults to cfg, checks it and prepares a Proxy; Run starts
// it.
func New(cfg *Config, opts ...Option) (*Proxy, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:       cfg,
		engine:    policy.NewEngine(),
		sem:       make(chan struct{}, cfg.MaxConnections),
		srcLimits: netsource.NewLimits(cfg.MaxConnectionsPerSource, cfg.MaxHandshakesPerSource),
		started:   make(chan struct{}),
		conns:     map[*connState]struct{}{},
		addrs:     map[string]net.Addr{},
		chains:    newChainCache(),
	}
	if cfg.TLS.Resumption() {
		p.tickets = newTicketKeys(time.Duration(cfg.TLS.SessionLifetime))
		p.sessions = newSessionCache(cfg.TLS.SessionCacheSize)
	}
	for _, o := range opts {
		o(p)
	}
	if _, ok := p.src.(updater); p.src != nil && !ok {
		// No notice of bundle or SVID changes: no sessions to drop on
		// them, so none are made.
		p.tickets, p.sessions = nil, nil
	}
	if p.log == nil {
		p.log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if p.access == nil {
		w, err := openAccessLog(cfg.AccessLog)
		if err != nil {
			return nil, err
		}
		p.access = slog.New(slog.NewJSONHandler(w, nil))
	}
	if p.psrc == nil && cfg.PolicySocket != "" {
		src, err := newAgentPolicySource(cfg.PolicySocket, p.log)
		if err != nil {
			return nil, err
		}
		p.psrc = src
	}
	if p.psrc == nil && len(cfg.PolicyFiles) > 0 {
		fs := NewFileSource(cfg.PolicyFiles, cfg.DenyListFile, time.Duration(cfg.PolicyPollInterval))
		p.psrc = fs
	}
	if fs, ok := p.psrc.(*FileSource); ok && fs.OnError == nil {
		fs.OnError = p.policyFailed
	}
	p.m = newMetrics(p.svidExpiry, &p.chainHits, &p.chainMisses)
	return p, nil
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

// Engine is the proxy's policy engine (read-only use: Status, Explain).
func (p *Proxy) Engine() *policy.Engine { return p.engine }

// Started is closed once every listener accepts connections.
func (p *Proxy) Started() <-chan struct{} { return p.started }

// Addr returns the bound address of the listener named name (useful with
// port 0), or nil. The admin listener is named "admin".
func (p *Proxy) Addr(name string) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[name]
}

// Reload asks a FileSource to re-read its files now (SIGHUP); other
// sources ignore it.
func (p *Proxy) Reload() {
	if fs, ok := p.psrc.(*FileSource); ok {
		fs.Reload()
	}
}

func (p *Proxy) svidExpiry() float64 {
	if !p.srcReady.Load() {
		return 0
	}
	s, err := p.src.GetX509SVID()
	if err != nil || len(s.Certificates) == 0 {
		return 0
	}
	return time.Until(s.Certificates[0].NotAfter).Seconds()
}

// Run starts the admin endpoint, connects to the Workload API, starts the
// policy source and the listeners, and serves until ctx is done; then it
// drains: listeners close, /readyz fails, open connections get
// drain_timeout to finish before they are closed.
func (p *Proxy) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer p.closeAll()

	if p.cfg.AdminAddress != "" {
		if err := p.startAdmin(); err != nil {
			return err
		}
	}
	if p.src == nil {
		xs, err := p.connectWorkloadAPI(ctx)
		if err != nil {
			return err
		}
		defer xs.Close()
		p.src = xs
	}
	p.srcReady.Store(true)
	if u, ok := p.src.(updater); ok && p.tickets != nil {
		// Every Workload API update (SVID, bundles) ends every session.
		var upWG sync.WaitGroup
		defer func() { cancel(); upWG.Wait() }()
		upWG.Add(1)
		go func() { defer upWG.Done(); p.watchUpdates(runCtx, u) }()
	}
	if svid, err := p.src.GetX509SVID(); err == nil {
		p.log.Info("identity", "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
	}
	if p.psrc != nil {
		var psWG sync.WaitGroup
		psWG.Add(1)
		go func() {
			defer psWG.Done()
			if err := p.psrc.Run(runCtx, p.applyPolicy); err != nil {
				p.log.Error("policy source stopped", "error", err)
			}
		}()
		if as, ok := p.psrc.(*agentPolicySource); ok {
			// Telemetry goes to the same agent, over the same connection.
			psWG.Add(1)
			go func() { defer psWG.Done(); p.runTelemetry(runCtx, as.conn) }()
		}
		defer psWG.Wait()
		defer cancel()
	}
	p.inboundTLS = p.serverTLS()
	for i := range p.cfg.Inbound {
		if err := p.startInbound(&p.cfg.Inbound[i]); err != nil {
			return err
		}
	}
	for i := range p.cfg.Outbound {
		if err := p.startOutbound(&p.cfg.Outbound[i]); err != nil {
			return err
		}
	}
	close(p.started)
	p.log.Info("proxy started", "inbound", len(p.cfg.Inbound), "outbound", len(p.cfg.Outbound))
	<-ctx.Done()
	p.drain()
	return nil
}

// policyFailed counts a failed policy load and logs it once (again only
// when the error changes, or after a good load): the file source retries
// every poll interval. What it says depends on whether a policy is in
// force; /readyz repeats the error.
func (p *Proxy) policyFailed(err error) {
	p.m.policyErrors.Inc()
	msg := err.Error()
	if prev := p.policyErr.Swap(&msg); prev != nil && *prev == msg {
		return
	}
	if _, ok := p.engine.Status(); ok {
		p.log.Error("policy reload failed; the previous policy stays in force (retried every policy_poll_interval, logged again when the error changes)", "error", err)
		return
	}
	p.log.Error("no policy could be loaded: every inbound connection is denied until one is (retried every policy_poll_interval, logged again when the error changes)", "error", err)
}

// applyPolicy stores s if newer and closes open connections it now denies.
func (p *Proxy) applyPolicy(s *policy.Set) {
	if !p.engine.StoreIfNewer(s) {
		p.log.Warn("policy update ignored: not newer than the policy in force", "version", s.Version())
		return
	}
	p.policyErr.Store(nil)
	// Taints and deny-lists arrive with policy versions: no session made
	// before one is resumed after it (each would be refused at its
	// handshake anyway; session.go).
	p.dropSessions()
	p.m.policyVersion.Set(float64(s.Version()))
	p.m.policyLoaded.Set(1)
	p.log.Info("policy in force", "version", s.Version(), "policies", s.Len(),
		"deny_list_ids", len(s.DenyList().SPIFFEIDs), "deny_list_serials", len(s.DenyList().Serials))
	p.recheck()
}

// watchUpdates drops every session on each update of the X509 source
// until ctx ends.
func (p *Proxy) watchUpdates(ctx context.Context, u updater) {
	for {
		select {
		case <-u.Updated():
			p.dropSessions()
		case <-ctx.Done():
			return
		}
	}
}

// dropSessions drops every ticket key and every cached outbound session.
func (p *Proxy) dropSessions() {
	if p.tickets == nil || p.tickets.keepOnChange {
		return
	}
	p.tickets.drop()
	p.sessions.clear()
}

// recheck decides every open inbound connection again and closes those the
// current policy (or deny-list) denies, and closes every open outbound
// connection whose server chain holds a CA key the deny-list now names
// as tainted.
func (p *Proxy) recheck() {
	p.mu.Lock()
	var open []*connState
	for c := range p.conns {
		if c.authorized.Load() {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		if !c.inbound {
			if d, tainted := p.serverKeyTainted(c); tainted {
				p.m.policyClosed.WithLabelValues(c.listener).Inc()
				c.revoke(d)
			}
			continue
		}
		req := c.req
		req.Context.Time = time.Time{}
		d := p.engine.Decide(req)
		if !d.Allowed {
			p.m.policyClosed.WithLabelValues(c.listener).Inc()
			c.revoke(d)
		}
	}
}

// serverKeyTainted reports whether the current policy's deny-list names a
// CA key of outbound connection c's server chain (c.req.ChainKeyIDs) as
// tainted, with the deny decision to log (cause tainted-ca-key, naming
// the key). An outbound connection is not otherwise policy-decided: the
// server's policy decides whether it may be reached.
func (p *Proxy) serverKeyTainted(c *connState) (policy.Decision, bool) {
	set := p.engine.Current()
	if set == nil {
		return policy.Decision{}, false
	}
	td := ""
	if id, err := spiffeid.FromString(c.req.Principal); err == nil {
		td = id.TrustDomain().Name()
	}
	k := set.TaintedKeyOf(td, c.req.ChainKeyIDs)
	if k == "" {
		return policy.Decision{}, false
	}
	return policy.Decision{Cause: policy.CauseTaintedKey, Reasons: []string{policy.ReasonTaintedKeyPrefix + k}, Version: set.Version()}, true
}

// track registers c for drain and policy re-checks; false when draining.
func (p *Proxy) track(c *connState) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining.Load() {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c *connState) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// listen opens addr (host:port or unix:///path, replacing a stale socket).
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

func (p *Proxy) addListener(name string, l net.Listener) {
	p.mu.Lock()
	p.listeners = append(p.listeners, l)
	p.addrs[name] = l.Addr()
	p.mu.Unlock()
}

// acceptLoop accepts on l and runs handle for each connection under the
// max_connections limit and, for inbound TCP listeners, the per-source
// limits (max_connections_per_source, max_handshakes_per_source).
//
// perSource is false for outbound listeners (the local app's side) and for
// inbound listeners with accept_proxy_v2: every connection of those comes
// from the gateway, which applies the per-source limits to the original
// sources itself.
func (p *Proxy) acceptLoop(l net.Listener, name, direction string, perSource bool, handle func(*connState, net.Conn)) {
	for {
		raw, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.draining.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			p.log.Error("accept failed", "listener", name, "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			p.m.rejected.WithLabelValues(name, rejectMaxConnections).Inc()
			raw.Close()
			continue
		}
		c := newConnState(name, direction == "inbound", raw)
		// Inbound TCP connections also count against their source's
		// limits until they close (open) and until their TLS handshake
		// ends (handshaking), so one host cannot hold every slot.
		if key := netsource.Key(raw.RemoteAddr()); perSource && key != "" {
			if r := p.srcLimits.Acquire(key); r != netsource.Accepted {
				reason := rejectPerSource
				if r == netsource.OverPending {
					reason = rejectPerSourceShakes
				}
				<-p.sem
				p.m.rejected.WithLabelValues(name, reason).Inc()
				p.warnRefusal(name, key, reason)
				raw.Close()
				continue
			}
			c.limits, c.src = p.srcLimits, key
			c.handshaking.Store(true)
		}
		if !p.track(c) {
			<-p.sem
			c.handshakeDone()
			if c.limits != nil {
				c.limits.Release(c.src)
			}
			p.m.rejected.WithLabelValues(name, rejectDraining).Inc()
			raw.Close()
			continue
		}
		p.m.total.WithLabelValues(name, direction).Inc()
		go func() {
			open := p.m.open.WithLabelValues(name, direction)
			open.Inc()
			defer func() {
				open.Dec()
				c.closeAll()
				c.handshakeDone()
				if c.limits != nil {
					c.limits.Release(c.src)
				}
				<-p.sem
				p.untrack(c)
			}()
			handle(c, raw)
		}()
	}
}

// warnRefusal logs a per-source refusal, at most once every 10 s (a host
// flooding the listener must not flood the log too; the metric counts
// every refusal).
func (p *Proxy) warnRefusal(listener, source, reason string) {
	now := time.Now().UnixNano()
	last := p.lastRefusalLog.Load()
	if now-last < int64(10*time.Second) || !p.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	limit, field := p.cfg.MaxConnectionsPerSource, "max_connections_per_source"
	if reason == rejectPerSourceShakes {
		limit, field = p.cfg.MaxHandshakesPerSource, "max_handshakes_per_source"
	}
	p.log.Warn("refusing connections from a source over its limit (further refusals counted in ward_proxy_connections_rejected_total, logged at most every 10s)",
		"listener", listener, "source", source, "reason", reason, field, limit)
}

func (p *Proxy) drain() {
	p.log.Info("draining: listeners closed, waiting for open connections", "timeout", time.Duration(p.cfg.DrainTimeout).String())
	p.mu.Lock()
	p.draining.Store(true)
	ls, dfs := p.listeners, p.drainFns
	p.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, f := range dfs {
		f()
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(time.Duration(p.cfg.DrainTimeout)):
	}
	p.mu.Lock()
	n := len(p.conns)
	for c := range p.conns {
		c.closeAll()
	}
	p.mu.Unlock()
	p.log.Warn("drain timeout: closed the remaining connections", "count", n)
	<-done
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	ls, fns := p.listeners, p.closeFns
	p.listeners, p.closeFns = nil, nil
	p.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, f := range fns {
		f()
	}
}

// readiness reports whether the proxy should receive traffic and why not.
func (p *Proxy) readiness() (bool, string) {
	if p.draining.Load() {
		return false, "draining (shutting down)"
	}
	select {
	case <-p.started:
	default:
		if why := p.waitReasonText(); why != "" {
			return false, "starting: no X509-SVID from the Workload API yet: " + why
		}
		return false, "starting: waiting for an X509-SVID from the Workload API"
	}
	if _, err := p.src.GetX509SVID(); err != nil {
		return false, "no X509-SVID: " + err.Error()
	}
	if len(p.cfg.Inbound) > 0 {
		if _, ok := p.engine.Status(); !ok {
			why := "no valid policy: every inbound connection is denied (fail closed); check policy_files or policy_socket and the proxy's log"
			if e := p.policyErr.Load(); e != nil {
				why += ": " + *e
			} else if as, ok := p.psrc.(*agentPolicySource); ok && as.lastError() != "" {
				why += ": policy_socket: " + as.lastError()
			}
			return false, why
		}
	}
	return true, ""
}

// readyText is /readyz's answer when ready: what it means for this
// proxy's listeners.
func (p *Proxy) readyText() string {
	var parts []string
	if len(p.cfg.Inbound) > 0 {
		v, _ := p.engine.Status()
		parts = append(parts, fmt.Sprintf("inbound: %d listener(s) deciding with policy version %d", len(p.cfg.Inbound), v))
	}
	if len(p.cfg.Outbound) > 0 {
		o := fmt.Sprintf("outbound: %d listener(s) with an X509-SVID", len(p.cfg.Outbound))
		if p.psrc == nil {
			o += " (no policy source: tainted CA keys are refused only by the servers)"
		} else if v, ok := p.engine.Status(); ok {
			o += fmt.Sprintf(", deny-list of policy version %d", v)
		} else {
			o += ", no policy yet (tainted CA keys not known here)"
		}
		parts = append(parts, o)
	}
	if e := p.policyErr.Load(); e != nil {
		parts = append(parts, "policy error: "+*e)
	}
	return "ready: " + strings.Join(parts, "; ")
}

func (p *Proxy) startAdmin() error {
	l, err := listen(p.cfg.AdminAddress)
	if err != nil {
		return fmt.Errorf("admin_address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(p.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := p.readiness()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", why)
			return
		}
		fmt.Fprintln(w, p.readyText())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	p.mu.Lock()
	p.addrs["admin"] = l.Addr()
	p.closeFns = append(p.closeFns, func() { srv.Close() })
	p.mu.Unlock()
	return nil
}
