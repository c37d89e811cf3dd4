package nodeapi

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/netsource"
	"github.com/wardproject/ward/internal/shared/policy"
)

// Resource limits of the Node API.
//
// grpc-go has one receive limit per server and reads a whole message
// before any interceptor runs (for unary calls), so a per-method limit
// cannot be checked after authentication. Instead the listener (route)
// does the TLS handshake itself and hands each connection to one of two
// gRPC servers:
//
//   - a connection that presented a client certificate verified against
//     the bundle (TLSConfig) and usable now (mainServerFor) goes to the
//     main server, whose limit is the largest authenticated need
//     (maxAuthenticatedMsg); authenticate then checks the SVID per call;
//   - a connection without a certificate (or with a refused one) goes to
//     the anonymous server,
//     which serves Attest only (everything else is Unauthenticated) with a
//     receive limit of maxAttestMsg and static 64 KiB flow-control windows:
//     grpc-go checks a message's announced length against the limit before
//     reading its body, and the windows bound what the peer can have in
//     flight, so an oversized Attest is refused (ResourceExhausted) without
//     being buffered.
//
// Attest on a connection with a certificate is refused (FailedPrecondition),
// so an SVID never buys the large limit for the unauthenticated method.
// Only a certificate that may actually call something gets the main server:
// route checks an agent SVID against the registry (registered, not
// evicted, current or within the superseded grace) and any SVID against
// the tainted CA keys right after the handshake, and sends the refused
// ones (and /ward/ IDs that are not agents) to the anonymous server, where
// their calls get authenticate's refusal and its small limits.
//
// Pre-authentication work is bounded without ever making accept wait, so
// idle connections cannot stall the API for everyone: a source (the TCP
// peer's IPv4 address, or its IPv6 /64) may have at most
// maxPreHandshakePerSource connections in their TLS handshake and at most
// maxAnonPerSource open connections on the anonymous server; each
// handshake gets handshakeTimeout; the anonymous server closes
// connections idle for anonMaxIdle and any connection after anonMaxAge.
// A connection keeps its handshake slot until it is routed (through
// mainServerFor's registry lookup). maxPreHandshake and maxAnonConns bound
// the totals as a safety net; when the handshake total is full, a
// newcomer whose source holds fewer pending handshakes than the biggest
// source sheds that source's oldest one (so many sources at their bound
// cannot lock everyone else out), and is refused only if its own source is
// (one of) the biggest. Connections over any of these are closed at once
// (never queued) and counted (Server.RefusedConnections), and at most
// Config.MaxConcurrentAttests attestations are in progress. Header lists
// are bounded (maxAnonHeaderList, maxAuthHeaderList), since HTTP/2 header
// blocks are not flow-controlled.
const (
	// maxAttestMsg bounds one Attest message. The largest legitimate one is
	// an x509pop first message: a CSR (the agent's is ECDSA P-256, ~250
	// bytes; parseCSR allows maxCSR = 16 KiB) and a node chain of at most
	// maxChain (8) certificates, ~1-2 KiB each even for RSA-4096 with a
	// few SANs (8 x 4 KiB = 32 KiB allows generous extensions). A join
	// token message is under 1 KiB; a challenge signature under 1 KiB.
	// 64 KiB is about 1.3x the worst legitimate case (16 + 32 KiB + framing).
	maxAttestMsg = 64 << 10
	// maxAuthenticatedMsg bounds messages from SVID holders: a workload
	// KMS batch (items of up to kms.MaxPlaintext, 64 KiB) and
	// SignX509SVIDs (up to MaxBatch CSRs of up to maxCSR) are the largest;
	// 32 MiB lets a batch of ~500 maximal plaintexts through and is what
	// the authority has always accepted from SVID holders.
	maxAuthenticatedMsg = 32 << 20
	// maxAuthStreams bounds concurrent streams per connection on the main
	// server (an agent needs a few: Sync, SignX509SVIDs, WatchPolicy).
	maxAuthStreams = 64
	// authStreamWorkers is how many calls of the main server run at once
	// on reused goroutines (long-lived streams such as WatchPolicy hold
	// one each while they last; beyond, calls get a goroutine of their own).
	authStreamWorkers = 64
	// handshakeTimeout bounds the TLS handshake (and grpc's HTTP/2
	// preface): a legitimate one takes milliseconds.
	handshakeTimeout = 5 * time.Second
	// maxPreHandshakePerSource bounds one source's connections in their
	// TLS handshake: a node makes one connection at a time; a NAT in front
	// of a few nodes that reconnect at once stays well under it.
	maxPreHandshakePerSource = 16
	// maxPreHandshake bounds all handshakes in progress (each parses and
	// verifies a peer chain): a safety net past the per-source bound. At
	// the total, a newcomer from a smaller source sheds the biggest
	// source's oldest pending handshake (counted as max_handshakes).
	maxPreHandshake = 512
	// maxAnonPerSource bounds one source's open connections without a
	// usable certificate (an attesting node needs one).
	maxAnonPerSource = 8
	// maxAnonConns bounds all of them: with the 64 KiB windows that caps
	// their in-flight data at ~64 MiB.
	maxAnonConns = 1024
	// maxAnonHeaderList and maxAuthHeaderList bound one HTTP/2 header
	// list (grpc.MaxHeaderListSize) on the anonymous and the main server.
	// Header blocks (HEADERS + CONTINUATION frames) are not flow-controlled
	// and grpc-go's default is 16 MiB, which a certificate-less peer could
	// make the server buffer per connection before any stream or
	// interceptor exists. An agent's headers (path, content-type, te,
	// user-agent, timeout, a few metadata entries) are well under 1 KiB; a
	// larger block closes the connection (PROTOCOL_ERROR or
	// COMPRESSION_ERROR) once it passes the limit, before the rest is read.
	maxAnonHeaderList = 16 << 10
	maxAuthHeaderList = 64 << 10
	// maxAnonStreams: an attesting agent needs one stream.
	maxAnonStreams = 4
	// anonMaxIdle and anonMaxAge end connections on the anonymous server
	// (idle: no stream open); an attestation takes one exchange bounded by
	// Config.AttestTimeout (30s by default), which anonMaxAgeGrace lets finish.
	anonMaxIdle     = 30 * time.Second
	anonMaxAge      = 2 * time.Minute
	anonMaxAgeGrace = 30 * time.Second
	// defaultMaxAttests is Config.MaxConcurrentAttests' default.
	defaultMaxAttests = 64
	// authorizeTimeout bounds route's registry lookup of an agent SVID.
	authorizeTimeout = 5 * time.Second
)

// Reasons route closes a connection (RefusedConnections).
const (
	RefusedHandshakesPerSource = "per_source_handshakes"
	RefusedHandshakes          = "max_handshakes"
	RefusedAnonPerSource       = "per_source_anonymous"
	RefusedAnon                = "max_anonymous"
)

// RefusedConnections reports how many connections route closed for
// reason (one of the Refused* constants) since the server started.
func (s *Server) RefusedConnections(reason string) uint64 {
	s.limits.mu.Lock()
	defer s.limits.mu.Unlock()
	return s.limits.refused[reason]
}

// connLimits counts connections in their handshake (each tracked, per
// source, oldest first, so that a full total can shed the biggest source's
// oldest) and open anonymous connections, per source and in total.
type connLimits struct {
	mu        sync.Mutex
	shaking   map[string]*list.List // of *pending, oldest first
	shakingN  int
	anon      map[string]int
	anonN     int
	refused   map[string]uint64
	onRefused func(reason string)
	lastWarn  time.Time
}

// pending is a connection holding a handshake slot.
type pending struct {
	c    net.Conn
	key  string
	elem *list.Element // nil once released (or shed)
}

func newConnLimits(onRefused func(string)) *connLimits {
	return &connLimits{shaking: map[string]*list.List{}, anon: map[string]int{}, refused: map[string]uint64{}, onRefused: onRefused}
}

// takeHandshake gives c (from source key) a handshake slot. A source at
// maxPreHandshakePerSource is refused. When the total is at
// maxPreHandshake, the newcomer is refused only if its own source holds
// (one of) the most pending handshakes; otherwise the oldest pending
// handshake of the biggest source is shed (returned, to be closed) and the
// newcomer admitted, so many sources filling the total cannot lock out a
// source that holds less than they do. It returns the slot (nil if
// refused), the refusal reason and the connection to shed, if any.
func (l *connLimits) takeHandshake(c net.Conn, key string) (p *pending, reason string, shed *pending) {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.shaking[key]
	mine := 0
	if q != nil {
		mine = q.Len()
	}
	if key != "" && mine >= maxPreHandshakePerSource { // "": not TCP, no per-source bound
		l.refused[RefusedHandshakesPerSource]++
		return nil, RefusedHandshakesPerSource, nil
	}
	if l.shakingN >= maxPreHandshake {
		var biggest *list.List
		for _, bq := range l.shaking {
			if biggest == nil || bq.Len() > biggest.Len() {
				biggest = bq
			}
		}
		l.refused[RefusedHandshakes]++
		if biggest == nil || biggest.Len() <= mine {
			return nil, RefusedHandshakes, nil
		}
		shed = biggest.Front().Value.(*pending)
		l.releaseLocked(shed)
	}
	if q == nil {
		q = list.New()
		l.shaking[key] = q
	}
	p = &pending{c: c, key: key}
	p.elem = q.PushBack(p)
	l.shakingN++
	return p, "", shed
}

// releaseHandshake gives p's slot back (a no-op if it was shed).
func (l *connLimits) releaseHandshake(p *pending) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releaseLocked(p)
}

func (l *connLimits) releaseLocked(p *pending) {
	if p.elem == nil {
		return
	}
	q := l.shaking[p.key]
	q.Remove(p.elem)
	p.elem = nil
	if q.Len() == 0 {
		delete(l.shaking, p.key)
	}
	l.shakingN--
}

// take counts one more connection of key in m (total *n) unless key is at
// perSource or the total at total; it returns the refusal reason or "".
func (l *connLimits) take(m map[string]int, n *int, key string, perSource, total int, perReason, totalReason string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	reason := ""
	switch {
	case key != "" && m[key] >= perSource: // "": not TCP, no per-source bound
		reason = perReason
	case *n >= total:
		reason = totalReason
	default:
		m[key]++
		*n++
		return ""
	}
	l.refused[reason]++
	return reason
}

func (l *connLimits) give(m map[string]int, n *int, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m[key] > 1 {
		m[key]--
	} else {
		delete(m, key)
	}
	*n--
}

// refuse closes c, refused for reason, and logs it (at most once a second).
func (s *Server) refuse(c net.Conn, key, reason string) {
	c.Close()
	if s.limits.onRefused != nil {
		s.limits.onRefused(reason)
	}
	s.limits.mu.Lock()
	now := time.Now()
	warn := now.Sub(s.limits.lastWarn) >= time.Second
	if warn {
		s.limits.lastWarn = now
	}
	s.limits.mu.Unlock()
	if warn {
		s.cfg.Log.Warn("Node API connection refused: too many connections from its source or in total; if this is a NAT in front of many nodes, stagger their reconnects",
			"source", key, "reason", reason)
	}
}

// route accepts TCP connections, completes their TLS handshake (bounded
// per source, in total and in time, refusing rather than queueing what is
// over a bound) and hands them to the main or the anonymous server.
func (s *Server) route(ln net.Listener) error {
	cfg := s.TLSConfig()
	l := s.limits
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		key := netsource.Key(c.RemoteAddr())
		p, reason, shed := l.takeHandshake(c, key)
		if shed != nil {
			s.refuse(shed.c, shed.key, RefusedHandshakes)
		}
		if p == nil {
			s.refuse(c, key, reason)
			continue
		}
		go s.serveConn(p, cfg)
	}
}

// serveConn handshakes c and hands it to a server.
// The handshake slot is held until the connection is routed, including
// mainServerFor's registry lookup (up to authorizeTimeout), so connections
// waiting on it count against their source's bound too.
func (s *Server) serveConn(p *pending, cfg *tls.Config) {
	l := s.limits
	c, key := p.c, p.key
	tc, err := handshake(c, cfg)
	if err != nil {
		l.releaseHandshake(p)
		s.cfg.Log.Debug("Node API TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		return
	}
	main := s.mainServerFor(tc.ConnectionState().PeerCertificates)
	l.releaseHandshake(p)
	if main {
		s.authLn.push(tc)
		return
	}
	if reason := l.take(l.anon, &l.anonN, key, maxAnonPerSource, maxAnonConns, RefusedAnonPerSource, RefusedAnon); reason != "" {
		s.refuse(tc, key, reason)
		return
	}
	s.anonLn.push(&countedConn{Conn: tc, release: func() { l.give(l.anon, &l.anonN, key) }})
}

// mainServerFor reports whether a connection presenting certs (already
// verified against the bundle by the handshake) gets the main server: a
// workload SVID, or the SVID of a current agent, not chaining to a tainted
// CA key. Everything else (no certificate; an agent SVID that is evicted,
// unknown or superseded past the grace; another /ward/ ID; a tainted chain,
// which may only renew, a small call) goes to the anonymous server, where
// authenticate refuses what it may not call, within the small limits.
func (s *Server) mainServerFor(certs []*x509.Certificate) bool {
	if len(certs) == 0 {
		return false
	}
	var raw [][]byte
	for _, c := range certs[1:] {
		raw = append(raw, c.Raw)
	}
	if s.taintedIn(raw) != "" {
		return false
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return false
	}
	if !reserved(id) {
		return true
	}
	if !registry.IsAgentID(s.td, id) {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), authorizeTimeout)
	defer cancel()
	_, err = s.cfg.Registry.Authorize(ctx, id, certs[0].SerialNumber.Text(16))
	// A registry that cannot answer now is no refusal: authenticate asks
	// again per call.
	return err == nil || errs.KindOf(err) != errs.Denied
}

func handshake(c net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// anonStream is the stream interceptor of the anonymous server: Attest
// within the concurrency bound, anything else refused by authenticate.
func (s *Server) anonStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if info.FullMethod == attestMethod {
		select {
		case s.attests <- struct{}{}:
			defer func() { <-s.attests }()
		default:
			return status.Errorf(codes.ResourceExhausted, "too many attestations in progress (%d): retry with backoff", cap(s.attests))
		}
	}
	return s.authStream(srv, ss, info, h)
}

// countedConn releases its slot among the anonymous connections on Close.
type countedConn struct {
	*tls.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// handshaken are the transport credentials of connections route has
// already taken through the TLS handshake: they report its state, so
// authenticate sees the peer certificates as with credentials.NewTLS.
type handshaken struct{}

type tlsStater interface {
	ConnectionState() tls.ConnectionState
}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(tlsStater)
	if !ok {
		c.Close()
		return nil, nil, errors.New("nodeapi: connection did not come through the TLS listener")
	}
	return c, newConnInfo(credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}), nil
}

// connInfo is a connection's TLS state with what authenticate derives from
// its peer chain on every call, derived once at the handshake: the chain
// of a TLS 1.3 connection never changes (no renegotiation), so these are
// the values every call would compute again. Verification itself still
// runs per call (verifySVID: time, bundle, taint, agent record).
type connInfo struct {
	credentials.TLSInfo
	raw    [][]byte // the peer certificates' DER, leaf first
	sum    [32]byte // chainSum(raw): the verified-chain cache's check
	serial string   // the leaf's serial in hex (deny-list serials)
}

func newConnInfo(ti credentials.TLSInfo) connInfo {
	ci := connInfo{TLSInfo: ti}
	if certs := ti.State.PeerCertificates; len(certs) > 0 {
		ci.raw = make([][]byte, len(certs))
		for i, c := range certs {
			ci.raw[i] = c.Raw
		}
		ci.sum = chainSum(ci.raw)
		ci.serial = policy.SerialHex(certs[0].SerialNumber)
	}
	return ci
}

// peerTLS returns the TLS state of the connection a call came on, with its
// derived values (computed here for AuthInfo that did not come through
// handshaken, as in tests).
func peerTLS(p *peer.Peer) (connInfo, bool) {
	if p == nil {
		return connInfo{}, false
	}
	switch ai := p.AuthInfo.(type) {
	case connInfo:
		return ai, true
	case credentials.TLSInfo:
		return newConnInfo(ai), true
	}
	return connInfo{}, false
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("nodeapi: server-side credentials only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }

// chanListener is a net.Listener fed by route.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
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

func (l *chanListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "nodeapi" }
func (chanAddr) String() string  { return "nodeapi-routed" }
