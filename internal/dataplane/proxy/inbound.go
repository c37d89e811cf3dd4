package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/proxyproto"
)

// Headers set for HTTP apps (peer_identity: http-header). Values sent by
// the caller under these names, in any spelling an app may fold together
// (case, '-' vs '_'; see stripOwnedHeaders), are removed first.
const (
	HeaderPeerID        = "X-Ward-Peer-Id"
	HeaderCorrelationID = "X-Ward-Correlation-Id"
)

func (p *Proxy) startInbound(in *Inbound) error {
	l, err := listen(in.Listen)
	if err != nil {
		return fmt.Errorf("inbound %s: %w", in.Name, err)
	}
	p.addListener(in.Name, l)
	var hf *httpFront
	if in.PeerIdentity == PeerIdentityHTTPHeader {
		hf = p.newHTTPFront(in)
	}
	go p.acceptLoop(l, in.Name, "inbound", !in.AcceptProxyV2, func(c *connState, raw net.Conn) { p.serveInbound(in, hf, c, raw) })
	return nil
}

// decide evaluates connect for c's request and records the metrics.
func (p *Proxy) decide(c *connState) policy.Decision {
	t0 := time.Now()
	d := p.engine.Decide(c.req)
	p.m.decisionSeconds.Observe(time.Since(t0).Seconds())
	result := "deny"
	if d.Allowed {
		result = "allow"
	}
	p.m.decisions.WithLabelValues(c.listener, result, d.Cause.String()).Inc()
	if len(d.DryRunDenials) > 0 {
		p.m.dryRun.WithLabelValues(c.listener, "would_deny").Inc()
	}
	if len(d.DryRunPermits) > 0 {
		p.m.dryRun.WithLabelValues(c.listener, "would_allow").Inc()
	}
	return d
}

func (p *Proxy) serveInbound(in *Inbound, hf *httpFront, c *connState, raw net.Conn) {
	defer p.logAccess(c)
	// keys: the CA key IDs of the chains the handshake verified, so a
	// tainted intermediate or root on the deny-list refuses the peer now
	// and on every re-check.
	var keys []string
	src, conn := raw.RemoteAddr(), raw
	if in.AcceptProxyV2 {
		var err error
		if src, conn, err = p.readGatewayHeader(c, raw); err != nil {
			c.handshakeDone()
			p.m.handshakeFail.WithLabelValues(c.listener, "proxy_v2").Inc()
			c.outcome, c.errText = "handshake_failed", "proxy_v2: "+err.Error()+" (accept_proxy_v2 is set: only a ward gateway with proxy_protocol: v2 may connect)"
			return
		}
		if !p.acquireGatewaySource(c, src) {
			return
		}
	}
	tc := tls.Server(conn, p.withChainKeys(p.inboundTLS, in.Name, &keys))
	c.add(tc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.cfg.HandshakeTimeout))
	err := tc.HandshakeContext(ctx)
	cancel()
	c.handshakeDone() // per-source pre-handshake slot (conn.go)
	if err != nil {
		reason := handshakeReason(err)
		p.m.handshakeFail.WithLabelValues(c.listener, reason).Inc()
		c.outcome, c.errText = "handshake_failed", reason+": "+err.Error()
		return
	}
	cs := tc.ConnectionState()
	c.tlsVersion = tlsVersionName(cs.Version)
	p.m.tlsVersion.WithLabelValues(c.listener, c.tlsVersion, cs.CurveID.String()).Inc()
	if c.resumed = cs.DidResume; c.resumed {
		p.m.resumed.WithLabelValues(c.listener, "inbound").Inc()
	}
	leaf := cs.PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil { // verified by the handshake already; belt and braces
		p.m.handshakeFail.WithLabelValues(c.listener, "bad_certificate").Inc()
		c.outcome, c.errText = "handshake_failed", err.Error()
		return
	}
	if len(keys) == 0 { // set by every successful verification; belt and braces
		p.m.handshakeFail.WithLabelValues(c.listener, "bad_certificate").Inc()
		c.outcome, c.errText = "handshake_failed", "x509svid: the handshake recorded no verified chain for the peer; refusing"
		return
	}
	c.req = policy.Request{
		Principal:   id.String(),
		CertSerial:  policy.SerialHex(leaf.SerialNumber),
		ChainKeyIDs: keys,
		Action:      policy.ActionConnect,
		Resource:    policy.Resource{Type: policy.TypeService, Name: in.Service.Name, Port: in.Service.Port, Classification: in.Service.Classification},
		Context:     policy.Context{SourceTrustDomain: id.TrustDomain().Name(), TLSVersion: c.tlsVersion, Destination: in.Listen},
	}
	d := p.decide(c)
	c.decision, c.decided = d, true
	if !d.Allowed {
		c.outcome = "denied"
		p.refuse(c, tc, d)
		return
	}
	c.authorized.Store(true)
	// A new policy may have arrived between Decide and authorized.Store,
	// and its re-check skipped this connection: decide again if so.
	if v, _ := p.engine.Status(); v != d.Version {
		if d = p.decide(c); !d.Allowed {
			c.decision = d
			c.outcome = "denied"
			p.refuse(c, tc, d)
			return
		}
		c.decision = d
	}
	if hf != nil {
		sendVerdict(tc, verdictAllowed, "", time.Duration(p.cfg.HandshakeTimeout))
		hf.serve(c, tc)
		c.outcome = "closed"
		return
	}
	app, err := p.dialApp(in.Forward)
	if err != nil {
		p.m.rejected.WithLabelValues(c.listener, "dial_app").Inc()
		c.outcome, c.errText = "dial_failed", err.Error()
		sendVerdict(tc, verdictAppUnavilable, fmt.Sprintf("service %q; correlation id %s in the server's access log", in.Service.Name, c.id),
			time.Duration(p.cfg.HandshakeTimeout))
		return
	}
	// The app's connection is tracked (a close of c closes it) and gets
	// its PROXY header before the caller is told it may talk, so the app
	// sees either the header first or a connection closed before any byte.
	c.add(app)
	if in.PeerIdentity == PeerIdentityProxyV2 {
		hdr, err := proxyproto.AppendV2(nil, src, raw.LocalAddr(),
			proxyproto.TLV{Type: proxyproto.TLVSPIFFEID, Value: []byte(c.req.Principal)}, proxyproto.TLV{Type: proxyproto.TLVUniqueID, Value: []byte(c.id)})
		if err == nil {
			_, err = app.Write(hdr)
		}
		if err != nil {
			c.outcome, c.errText = "dial_failed", "PROXY header: "+err.Error()
			sendVerdict(tc, verdictAppUnavilable, fmt.Sprintf("service %q; correlation id %s in the server's access log", in.Service.Name, c.id),
				time.Duration(p.cfg.HandshakeTimeout))
			return
		}
	}
	sendVerdict(tc, verdictAllowed, "", time.Duration(p.cfg.HandshakeTimeout))
	c.outcome = "closed"
	if err := pipe(c, tc, app, time.Duration(p.cfg.IdleTimeout)); err != nil {
		c.errText = err.Error()
	}
}

// readGatewayHeader reads the PROXY v2 header a gateway sends before the
// ClientHello (within handshake_timeout), records the original source in
// c and returns it with the connection to read the TLS bytes from.
func (p *Proxy) readGatewayHeader(c *connState, raw net.Conn) (net.Addr, net.Conn, error) {
	raw.SetReadDeadline(c.start.Add(time.Duration(p.cfg.HandshakeTimeout)))
	br := bufio.NewReaderSize(raw, 4096)
	h, err := proxyproto.ReadV2(br)
	if err != nil {
		return nil, nil, err
	}
	raw.SetReadDeadline(time.Time{})
	src := raw.RemoteAddr()
	c.via, c.viaID = c.client, h.CorrelationID()
	if !h.Local && h.Src != nil {
		src = h.Src
		c.client = h.Src.String()
	}
	return src, &bufConn{Conn: raw, r: br}, nil
}

// bufConn reads through r (which may hold bytes read ahead of a header).
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// refuse tells a calling ward proxy (verdict.go) that the policy denied
// its connection: the policy version, the cause and the correlation id of
// the server's access-log line, not the policies' text.
func (p *Proxy) refuse(c *connState, tc *tls.Conn, d policy.Decision) {
	sendVerdict(tc, verdictDenied, fmt.Sprintf("connect to service %q denied by policy version %d (%s); correlation id %s in the server's access log",
		c.req.Resource.Name, d.Version, d.Cause, c.id), time.Duration(p.cfg.HandshakeTimeout))
}

func (p *Proxy) dialApp(addr string) (net.Conn, error) {
	network, a := splitAddr(addr)
	conn, err := net.DialTimeout(network, a, time.Duration(p.cfg.DialTimeout))
	if err != nil {
		return nil, fmt.Errorf("dial app %s: %w (is the app listening?)", addr, err)
	}
	return conn, nil
}

// logAccess writes the connection's access-log line.
func (p *Proxy) logAccess(c *connState) {
	attrs := []slog.Attr{
		slog.String("correlation_id", c.id),
		slog.String("listener", c.listener),
		slog.String("direction", map[bool]string{true: "inbound", false: "outbound"}[c.inbound]),
		slog.String("client_addr", c.client),
		slog.String("peer_id", c.req.Principal),
	}
	if c.req.Context.SourceTrustDomain != "" {
		attrs = append(attrs, slog.String("peer_trust_domain", c.req.Context.SourceTrustDomain))
	}
	if c.via != "" {
		attrs = append(attrs, slog.String("via_gateway", c.via), slog.String("gateway_id", c.viaID))
	}
	if c.service != "" {
		attrs = append(attrs, slog.String("service", c.service), slog.Int("failovers", c.failovers))
	}
	if c.req.CertSerial != "" {
		attrs = append(attrs, slog.String("peer_serial", c.req.CertSerial))
	}
	if c.tlsVersion != "" {
		attrs = append(attrs, slog.String("tls_version", c.tlsVersion))
		if c.resumed {
			attrs = append(attrs, slog.Bool("tls_resumed", true))
		}
	}
	outcome := c.outcome
	if r := c.revoked.Load(); r != nil {
		outcome = "closed_by_policy"
		c.decision = *r
		c.decided = true
	}
	if c.decided {
		dec := "deny"
		if c.decision.Allowed {
			dec = "allow"
		}
		attrs = append(attrs,
			slog.String("decision", dec),
			slog.String("cause", c.decision.Cause.String()),
			slog.Uint64("policy_version", c.decision.Version),
			slog.Any("policies", nonNil(c.decision.Reasons)))
		if len(c.decision.DryRunDenials) > 0 {
			attrs = append(attrs, slog.Any("dry_run_denials", c.decision.DryRunDenials))
		}
		if len(c.decision.DryRunPermits) > 0 {
			attrs = append(attrs, slog.Any("dry_run_permits", c.decision.DryRunPermits))
		}
	}
	attrs = append(attrs,
		slog.String("outcome", outcome),
		slog.Int64("bytes_in", c.bytesIn.Load()),
		slog.Int64("bytes_out", c.bytesOut.Load()),
		slog.Float64("duration_ms", float64(time.Since(c.start).Microseconds())/1000))
	if c.errText != "" && outcome != "closed_by_policy" {
		attrs = append(attrs, slog.String("error", c.errText))
	}
	if c.inbound {
		p.m.bytes.WithLabelValues(c.listener, "in").Add(float64(c.bytesIn.Load()))
		p.m.bytes.WithLabelValues(c.listener, "out").Add(float64(c.bytesOut.Load()))
	} else {
		p.m.bytes.WithLabelValues(c.listener, "in").Add(float64(c.bytesIn.Load()))
		p.m.bytes.WithLabelValues(c.listener, "out").Add(float64(c.bytesOut.Load()))
	}
	p.access.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// httpFront serves authorized connections of an http-header listener: an
// HTTP/1.1 reverse proxy to the app that sets X-Ward-Peer-Id and
// X-Ward-Correlation-Id on every request.
type httpFront struct {
	srv *http.Server
	ch  chan net.Conn
}

type ctxKey struct{}

func (p *Proxy) newHTTPFront(in *Inbound) *httpFront {
	network, addr := splitAddr(in.Forward)
	target := &url.URL{Scheme: "http", Host: addr}
	if network == "unix" {
		target.Host = "app"
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			c := r.In.Context().Value(ctxKey{}).(*connState)
			r.SetURL(target)
			r.Out.Host = r.In.Host
			// Every spelling an app may fold into these names (header.go).
			stripOwnedHeaders(r.Out.Header)
			stripOwnedHeaders(r.Out.Trailer)
			r.Out.Header.Set(HeaderPeerID, c.req.Principal)
			r.Out.Header.Set(HeaderCorrelationID, c.id)
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				d := net.Dialer{Timeout: time.Duration(p.cfg.DialTimeout)}
				return d.DialContext(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     time.Duration(p.cfg.IdleTimeout),
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.m.rejected.WithLabelValues(in.Name, "dial_app").Inc()
			p.log.Warn("app request failed", "listener", in.Name, "error", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	hf := &httpFront{ch: make(chan net.Conn)}
	hf.srv = &http.Server{
		Handler:           rp,
		ReadHeaderTimeout: time.Duration(p.cfg.HandshakeTimeout),
		IdleTimeout:       time.Duration(p.cfg.IdleTimeout),
		ConnContext: func(ctx context.Context, conn net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, conn.(*countedConn).c)
		},
		ErrorLog: nil,
	}
	l := &chanListener{ch: hf.ch, done: make(chan struct{})}
	go func() { _ = hf.srv.Serve(l) }()
	p.mu.Lock()
	p.closeFns = append(p.closeFns, func() { hf.srv.Close() })
	// on drain, idle keep-alive connections close now and busy ones after
	// their current request
	p.drainFns = append(p.drainFns, func() { hf.srv.SetKeepAlivesEnabled(false) })
	p.mu.Unlock()
	return hf
}

// serve hands tc to the HTTP server and waits until it closes it.
func (hf *httpFront) serve(c *connState, tc *tls.Conn) {
	cc := &countedConn{Conn: tc, c: c, done: make(chan struct{})}
	c.add(cc)
	select {
	case hf.ch <- cc:
		<-cc.done
	case <-time.After(5 * time.Second):
	}
}

// countedConn counts bytes and reports its Close.
type countedConn struct {
	net.Conn
	c    *connState
	once sync.Once
	done chan struct{}
}

func (cc *countedConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	cc.c.bytesIn.Add(int64(n))
	return n, err
}

func (cc *countedConn) Write(b []byte) (int, error) {
	n, err := cc.Conn.Write(b)
	cc.c.bytesOut.Add(int64(n))
	return n, err
}

func (cc *countedConn) Close() error {
	err := cc.Conn.Close()
	cc.once.Do(func() { close(cc.done) })
	return err
}

// chanListener is a net.Listener fed from a channel.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "ward-http-front", Net: "unix"} }
