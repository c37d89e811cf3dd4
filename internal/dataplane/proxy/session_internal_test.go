package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/shared/policy"
)

// svidSource is an X509Source whose SVID and bundles a test replaces;
// each change is notified on Updated.
type svidSource struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	upd     chan struct{}
}

func (s *svidSource) Updated() <-chan struct{} { return s.upd }

func (s *svidSource) notify() {
	select {
	case s.upd <- struct{}{}:
	default:
	}
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

func (s *svidSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.bundles[td]; ok {
		return b, nil
	}
	return nil, errors.New("no bundle for " + td.Name())
}

func (s *svidSource) setSVID(v *x509svid.SVID) { s.mu.Lock(); s.svid = v; s.mu.Unlock(); s.notify() }

func (s *svidSource) setBundle(cas ...*testCA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var certs []*x509.Certificate
	for _, ca := range cas {
		certs = append(certs, ca.cert)
	}
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	s.bundles = map[spiffeid.TrustDomain]*x509bundle.Bundle{td: x509bundle.FromX509Authorities(td, certs)}
	s.notify()
}

// setTDBundle sets (cas) or removes (none) the bundle of trust domain td.
func (s *svidSource) setTDBundle(td string, cas ...*testCA) {
	s.mu.Lock()
	id := spiffeid.RequireTrustDomainFromString(td)
	if len(cas) == 0 {
		delete(s.bundles, id)
	} else {
		var certs []*x509.Certificate
		for _, ca := range cas {
			certs = append(certs, ca.cert)
		}
		s.bundles[id] = x509bundle.FromX509Authorities(id, certs)
	}
	s.mu.Unlock()
	s.notify()
}

func (ca *testCA) svid(t testing.TB, id string, notAfter time.Time) *x509svid.SVID {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, k.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{c}, PrivateKey: crypto.Signer(k)}
}

// sessionPair is a server proxy and a client proxy (TLS configs only,
// handshakes over net.Pipe) of one trust domain, resumption on.
type sessionPair struct {
	t                testing.TB
	ca               *testCA
	srvSrc, cliSrc   *svidSource
	server, client   *Proxy
	serverID         spiffeid.ID
	listener, remote string
	l                net.Listener
}

const (
	pairServerID = "spiffe://prod.example/ns/shop/api"
	pairClientID = "spiffe://prod.example/ns/shop/web"
)

func newTestProxy(t testing.TB, src X509Source) *Proxy {
	t.Helper()
	cfg := &Config{WorkloadAPISocket: "unix:///nonexistent", Outbound: []Outbound{{Name: "o", Listen: "127.0.0.1:0", Remote: "127.0.0.1:1", ServerID: pairServerID}}}
	p, err := New(cfg, WithX509Source(src), WithLogger(slog.New(slog.DiscardHandler)), WithAccessLog(discard{}))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

func newSessionPair(t testing.TB) *sessionPair {
	ca := newTestCA(t, "A")
	sp := &sessionPair{t: t, ca: ca, srvSrc: &svidSource{upd: make(chan struct{}, 1)}, cliSrc: &svidSource{upd: make(chan struct{}, 1)}, listener: "api", remote: "10.0.0.1:8443",
		serverID: spiffeid.RequireFromString(pairServerID)}
	sp.srvSrc.setSVID(ca.svid(t, pairServerID, time.Now().Add(time.Hour)))
	sp.cliSrc.setSVID(ca.svid(t, pairClientID, time.Now().Add(time.Hour)))
	sp.srvSrc.setBundle(ca)
	sp.cliSrc.setBundle(ca)
	sp.server, sp.client = newTestProxy(t, sp.srvSrc), newTestProxy(t, sp.cliSrc)
	return sp
}

// handshake runs one connection; it returns whether it resumed, the
// client's and server's errors (the server's VerifyConnection error on a
// resumption reaches the client as an alert on its first read).
func (sp *sessionPair) handshake(sni string) (resumed bool, cliErr, srvErr error) {
	return sp.handshakeAs(sp.listener, sni, sp.serverID)
}

func (sp *sessionPair) handshakeAs(listener, sni string, serverID spiffeid.ID) (resumed bool, cliErr, srvErr error) {
	a, b := sp.tcpPair()
	defer a.Close()
	defer b.Close()
	var srvKeys, cliKeys []string
	srv := tls.Server(b, sp.server.withChainKeys(sp.server.serverTLS(), listener, &srvKeys))
	cli := tls.Client(a, sp.client.clientTLS("o", serverID, sni, sp.remote, &cliKeys))
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			// one byte so that the client reads the ticket
			_, err = srv.Write([]byte{1})
		}
		done <- err
	}()
	a.SetDeadline(time.Now().Add(10 * time.Second))
	b.SetDeadline(time.Now().Add(10 * time.Second))
	cliErr = cli.Handshake()
	if cliErr == nil {
		var buf [1]byte
		_, cliErr = cli.Read(buf[:])
	}
	srvErr = <-done
	return cli.ConnectionState().DidResume, cliErr, srvErr
}

// tcpPair is a connected loopback TCP pair to the pair's one listener
// (net.Pipe does not buffer: the server's ticket and the client's first
// read would wait on each other; Go's client keys sessions without SNI by
// the remote address).
func (sp *sessionPair) tcpPair() (net.Conn, net.Conn) {
	t := sp.t
	t.Helper()
	if sp.l == nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		sp.l = l
	}
	a, err := net.Dial("tcp", sp.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := sp.l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func (sp *sessionPair) mustResume(sni string, want bool) {
	sp.t.Helper()
	r, ce, se := sp.handshake(sni)
	if ce != nil || se != nil {
		sp.t.Fatalf("handshake: client %v, server %v", ce, se)
	}
	if r != want {
		sp.t.Fatalf("resumed %v, want %v", r, want)
	}
}

// TestResumedHandshakeVerifiedAgainstCurrentTrust runs the attacks on the
// verification alone: ticket keys are kept across changes
// (keepOnChange), so the ticket is opened and the session offered, and
// the resumed handshake must still be refused by VerifyConnection, on
// the chain the session carries against the current bundle and clock.
func TestResumedHandshakeVerifiedAgainstCurrentTrust(t *testing.T) {
	t.Run("client CA removed from the server's bundle", func(t *testing.T) {
		sp := newSessionPair(t)
		sp.server.tickets.keepOnChange = true
		sp.mustResume("", false)
		sp.mustResume("", true)
		other := newTestCA(t, "B")
		sp.srvSrc.setBundle(other) // A left the server's bundle
		r, ce, se := sp.handshake("")
		if se == nil || ce == nil || !strings.Contains(se.Error(), "x509svid") {
			t.Fatalf("resumption after the client's CA left the bundle: resumed %v, client %v, server %v", r, ce, se)
		}
		if !r {
			t.Fatal("the session was not offered and accepted, so the verification was not what refused it")
		}
	})
	t.Run("server CA removed from the client's bundle", func(t *testing.T) {
		sp := newSessionPair(t)
		sp.server.tickets.keepOnChange = true
		sp.mustResume("", false)
		sp.mustResume("", true)
		sp.cliSrc.setBundle(newTestCA(t, "B"))
		r, ce, _ := sp.handshake("")
		if ce == nil || !strings.Contains(ce.Error(), "x509svid") || !r {
			t.Fatalf("client resumed with a server whose CA left its bundle (or did not offer the session: resumed %v): %v", r, ce)
		}
	})
	t.Run("tainted server CA key (outbound check)", func(t *testing.T) {
		sp := newSessionPair(t)
		sp.server.tickets.keepOnChange = true
		sp.mustResume("", false)
		kid, err := keyIDs.get(sp.ca.cert)
		if err != nil {
			t.Fatal(err)
		}
		s, err := policy.Compile(map[string][]byte{"p.cedar": []byte(`permit (principal, action, resource);`)})
		if err != nil {
			t.Fatal(err)
		}
		if s, err = s.WithDenyList(policy.DenyList{TaintedKeys: []string{kid}}); err != nil {
			t.Fatal(err)
		}
		sp.mustResume("", true)
		sp.client.engine.Store(s.WithVersion(1)) // no drop: Store, not applyPolicy
		r, ce, _ := sp.handshake("")
		if ce == nil || !strings.Contains(ce.Error(), "tainted") || !r {
			t.Fatalf("client resumed with a server chain through a tainted key (or did not offer the session: resumed %v): %v", r, ce)
		}
	})
}

// TestFederatedPeerResumption: a client of a federated trust domain
// resumes like a local one, and once its trust domain's bundle is gone
// from the server (the federation ended) or replaced by one without its
// CA, its session is refused at the verification (keys kept to show it).
func TestFederatedPeerResumption(t *testing.T) {
	for _, end := range []string{"bundle removed", "CA rotated out"} {
		t.Run(end, func(t *testing.T) {
			sp := newSessionPair(t)
			sp.server.tickets.keepOnChange = true
			caB := newTestCA(t, "B")
			sp.srvSrc.setTDBundle("b.example", caB)
			sp.cliSrc.setSVID(caB.svid(t, "spiffe://b.example/ns/pay/client", time.Now().Add(time.Hour)))
			sp.mustResume("", false)
			sp.mustResume("", true)
			if end == "bundle removed" {
				sp.srvSrc.setTDBundle("b.example")
			} else {
				sp.srvSrc.setTDBundle("b.example", newTestCA(t, "B2"))
			}
			r, ce, se := sp.handshake("")
			if se == nil || ce == nil || !r {
				t.Fatalf("federated peer after %s: resumed %v, client %v, server %v", end, r, ce, se)
			}
			if end == "bundle removed" && handshakeReason(se) != reasonNotFederated {
				t.Fatalf("reason %q: %v", handshakeReason(se), se)
			}
		})
	}
}

// TestTicketEndsWithEarliestSVID: a ticket ends at the earliest of the
// peer leaf's NotAfter, the own leaf's NotAfter and the session lifetime;
// a ticket re-issued on a resumption keeps the end of the one resumed;
// past its end it is refused.
func TestTicketEndsWithEarliestSVID(t *testing.T) {
	sp := newSessionPair(t)
	p := sp.server
	now := time.Now()
	ownSoon := sp.ca.svid(t, pairServerID, now.Add(3*time.Minute))
	sp.srvSrc.setSVID(ownSoon)
	own, err := p.certs.current(p.src)
	if err != nil {
		t.Fatal(err)
	}
	peerSoon := sp.ca.svid(t, pairClientID, now.Add(2*time.Minute)).Certificates[0]
	peerLate := sp.ca.svid(t, pairClientID, now.Add(time.Hour)).Certificates[0]
	endOf := func(st *serverSession, cs tls.ConnectionState) int64 {
		t.Helper()
		tk := p.wrapSession(st, cs, &tls.SessionState{})
		m, _, r := p.tickets.open(tk, time.Now())
		if r != "" {
			t.Fatalf("ticket not usable: %s", r)
		}
		return m.expiry
	}
	cs := tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{peerSoon}}
	if got := endOf(&serverSession{listener: "api", own: own}, cs); got != peerSoon.NotAfter.UnixMilli() {
		t.Fatalf("end %d, want the peer leaf's NotAfter %d", got, peerSoon.NotAfter.UnixMilli())
	}
	cs.PeerCertificates = []*x509.Certificate{peerLate}
	if got := endOf(&serverSession{listener: "api", own: own}, cs); got != ownSoon.Certificates[0].NotAfter.UnixMilli() {
		t.Fatalf("end %d, want the own leaf's NotAfter", got)
	}
	p.tickets.every = time.Minute
	if got := endOf(&serverSession{listener: "api", own: own}, cs); got > time.Now().Add(time.Minute).UnixMilli() {
		t.Fatalf("end %d beyond the session lifetime", got)
	}
	// Re-issued on a resumption: the end of the ticket resumed.
	resumed := &ticketMeta{expiry: now.Add(10 * time.Second).UnixMilli(), listener: "api", ownFP: own.fp}
	cs.DidResume = true
	if got := endOf(&serverSession{listener: "api", resumed: resumed}, cs); got != resumed.expiry {
		t.Fatalf("re-issued ticket ends %d, the resumed one %d", got, resumed.expiry)
	}
	// 0-RTT stays off: a session marked for early data is sealed without
	// it (Go's TLS server never offers it outside QUIC; unwrapSession
	// clears it too).
	cs.DidResume = false
	early := &tls.SessionState{EarlyData: true}
	p.wrapSession(&serverSession{listener: "api", own: own}, cs, early)
	if early.EarlyData {
		t.Fatal("a session was sealed allowing early data")
	}
	// Past its end: refused.
	old, err := p.tickets.seal(&ticketMeta{expiry: now.Add(-time.Second).UnixMilli(), listener: "api", ownFP: own.fp}, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, r := p.unwrapSession(&serverSession{listener: "api"}, old, tls.ConnectionState{Version: tls.VersionTLS13}); r != ticketExpired {
		t.Fatalf("ticket past its end: %q", r)
	}
	// Not TLS 1.3: refused.
	if _, r := p.unwrapSession(&serverSession{listener: "api"}, old, tls.ConnectionState{Version: tls.VersionTLS12}); r != ticketNotTLS13 {
		t.Fatalf("TLS 1.2: %q", r)
	}
}

// TestTicketBindings: a ticket opens only on the listener and SNI that
// issued it, only while the proxy holds the SVID it was made with, only
// until its end, and only under a key that is current or previous;
// dropped keys open nothing.
func TestTicketBindings(t *testing.T) {
	sp := newSessionPair(t)
	sp.server.tickets.keepOnChange = true
	sp.mustResume("a.example", false)
	sp.mustResume("a.example", true)
	refused := func(reason string) float64 { return testCounter(t, sp.server.m.ticketsRefused.WithLabelValues(reason)) }

	// The client offers its session only to what it was made for.
	sp.mustResume("b.example", false)
	other := spiffeid.RequireFromString("spiffe://prod.example/ns/shop/other")
	if r, _, _ := sp.handshakeAs(sp.listener, "a.example", other); r {
		t.Fatal("a session was resumed with a server of another SPIFFE ID")
	}

	// Presented to another listener (the client's cache is keyed by its
	// own listener, not the server's: the ticket reaches the other
	// listener) it is refused.
	n := refused(ticketOtherBinding)
	if r, ce, se := sp.handshakeAs("other", "a.example", sp.serverID); r || ce != nil || se != nil {
		t.Fatalf("ticket of listener api on listener other: resumed %v %v %v", r, ce, se)
	}
	if refused(ticketOtherBinding) != n+1 {
		t.Fatal("not refused as other_listener")
	}

	// The server's SVID rotates: its tickets are refused.
	sp.mustResume("a.example", false) // a fresh session on api (the last one was made on other)
	sp.srvSrc.setSVID(sp.ca.svid(t, pairServerID, time.Now().Add(time.Hour)))
	n = refused(ticketOwnRotated)
	sp.mustResume("a.example", false)
	if refused(ticketOwnRotated) != n+1 {
		t.Fatal("not refused as own_svid_changed")
	}

	// Dropped keys open nothing.
	sp.mustResume("a.example", true)
	sp.server.tickets.keepOnChange = false
	sp.server.dropSessions()
	n = refused(ticketUnknownKey)
	sp.mustResume("a.example", false)
	if refused(ticketUnknownKey) != n+1 {
		t.Fatal("not refused as unknown_key after the keys were dropped")
	}

	// Keys dropped during a handshake: the session it verified before the
	// drop gets no usable ticket; a client cache cleared during a
	// handshake keeps nothing of it.
	st := &serverSession{listener: "api", gen: sp.server.tickets.drops.Load()}
	if sc, err := sp.server.certs.current(sp.server.src); err == nil {
		st.own = sc
	}
	sp.server.dropSessions()
	peer := sp.ca.svid(t, pairClientID, time.Now().Add(time.Hour)).Certificates[0]
	tk := sp.server.wrapSession(st, tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{peer}}, &tls.SessionState{})
	if _, _, r := sp.server.tickets.open(tk, time.Now()); r != ticketUnknownKey {
		t.Fatalf("a ticket from a handshake that began before a drop opens (%q)", r)
	}
	view := &sessionView{cache: sp.client.sessions, gen: sp.client.sessions.gen.Load(), prefix: "during",
		own: &svidCert{svid: &x509svid.SVID{Certificates: []*x509.Certificate{peer}}}}
	view.verified(tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{peer}}, time.Minute)
	sp.client.sessions.clear()
	view.Put("k", &tls.ClientSessionState{})
	if _, ok := view.Get("k"); ok {
		t.Fatal("a session from a handshake that began before a clear was kept")
	}

	// A bundle change (a CA added) notified by the source drops every
	// key and empties the client's cache.
	sp.mustResume("a.example", false)
	sp.mustResume("a.example", true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range []*Proxy{sp.server, sp.client} {
		go p.watchUpdates(ctx, p.src.(updater))
	}
	d0 := sp.server.tickets.drops.Load()
	sp.srvSrc.setBundle(sp.ca, newTestCA(t, "C"))
	sp.cliSrc.setBundle(sp.ca, newTestCA(t, "C"))
	waitUntil(t, func() bool { return sp.server.tickets.drops.Load() > d0 && sp.client.sessions.len() == 0 })
	sp.mustResume("a.example", false)
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached in 10s")
}

func testCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestTicketKeysRotateAndExpire: keys rotate every period, the previous
// one still opens for one more period, nothing older opens; a ticket past
// its end is refused; the plaintext holds no early data.
func TestTicketKeysRotateAndExpire(t *testing.T) {
	k := newTicketKeys(time.Minute)
	t0 := time.Now()
	m := &ticketMeta{expiry: t0.Add(time.Hour).UnixMilli(), listener: "api"}
	tk, err := k.seal(m, []byte("state"), t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, st, r := k.open(tk, t0); r != "" || string(st) != "state" {
		t.Fatalf("open: %q %q", st, r)
	}
	if _, err := k.seal(m, nil, t0.Add(61*time.Second)); err != nil { // rotates
		t.Fatal(err)
	}
	if _, _, r := k.open(tk, t0.Add(61*time.Second)); r != "" {
		t.Fatalf("previous key refused: %s", r)
	}
	if _, _, r := k.open(tk, t0.Add(121*time.Second)); r != ticketUnknownKey {
		t.Fatalf("key two periods old still opens: %q", r)
	}
	// Tampering is refused.
	tk2, _ := k.seal(m, []byte("state"), t0.Add(61*time.Second))
	tk2[len(tk2)-1] ^= 1
	if _, _, r := k.open(tk2, t0.Add(61*time.Second)); r != ticketInvalid {
		t.Fatalf("tampered ticket: %q", r)
	}
}

// TestSessionCacheBoundedAndKeyed: the outbound cache holds at most its
// bound, and a session stored for one route and identity is not found
// under any other.
func TestSessionCacheBoundedAndKeyed(t *testing.T) {
	c := newSessionCache(8)
	own := &svidCert{fp: [32]byte{1}}
	own2 := &svidCert{fp: [32]byte{2}}
	now := time.Now()
	base := sessionKeyPrefix("o", "spiffe://a.example/api", "sni", "10.0.0.1:1", own)
	others := []string{
		sessionKeyPrefix("o2", "spiffe://a.example/api", "sni", "10.0.0.1:1", own),
		sessionKeyPrefix("o", "spiffe://b.example/api", "sni", "10.0.0.1:1", own), // federated peer, same path
		sessionKeyPrefix("o", "spiffe://a.example/api", "sni2", "10.0.0.1:1", own),
		sessionKeyPrefix("o", "spiffe://a.example/api", "sni", "10.0.0.2:1", own),
		sessionKeyPrefix("o", "spiffe://a.example/api", "sni", "10.0.0.1:1", own2),
		sessionKeyPrefix("o", "spiffe://a.example/ap", "isni", "10.0.0.1:1", own), // no ambiguity in concatenation
	}
	c.put(base+"k", &tls.ClientSessionState{}, now.Add(time.Minute))
	for i, o := range others {
		if _, _, ok := c.get(o+"k", now); ok {
			t.Fatalf("session found under other key %d", i)
		}
	}
	if _, _, ok := c.get(base+"k", now.Add(2*time.Minute)); ok {
		t.Fatal("session past its end was offered")
	}
	// A TLS 1.2 session (a non-ward server) is never kept: its resumption
	// has no fresh key exchange.
	leaf := newTestCA(t, "A").leaf(t, "spiffe://a.example/api", now.Add(-time.Minute), now.Add(time.Hour))
	v := &sessionView{cache: c, prefix: "v12", own: &svidCert{svid: &x509svid.SVID{Certificates: []*x509.Certificate{leaf}}}}
	v.verified(tls.ConnectionState{Version: tls.VersionTLS12, PeerCertificates: []*x509.Certificate{leaf}}, time.Minute)
	v.Put("k", &tls.ClientSessionState{})
	if _, ok := v.Get("k"); ok {
		t.Fatal("a TLS 1.2 session was kept")
	}
	v.verified(tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{leaf}}, time.Minute)
	v.Put("k", &tls.ClientSessionState{})
	if _, ok := v.Get("k"); !ok {
		t.Fatal("a TLS 1.3 session was not kept")
	}
	for i := 0; i < 100; i++ {
		c.put(string(rune(i)), &tls.ClientSessionState{}, now.Add(time.Minute))
	}
	if n := c.len(); n != 8 {
		t.Fatalf("cache holds %d, bound 8", n)
	}
}

// FuzzTicketOpen: tickets are the client's bytes; opening any of them
// never panics and only our sealed ones open.
func FuzzTicketOpen(f *testing.F) {
	k := newTicketKeys(time.Minute)
	now := time.Now()
	good, _ := k.seal(&ticketMeta{expiry: now.Add(time.Minute).UnixMilli(), listener: "api", sni: "x"}, []byte("s"), now)
	f.Add(good)
	f.Add([]byte{})
	f.Add(make([]byte, ticketMinSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, _, r := k.open(b, now)
		if r == "" && m == nil {
			t.Fatal("opened without meta")
		}
		m2, rest, err := decodeTicketMeta(b)
		if err == nil {
			if len(b) < 1+8+4+32 {
				t.Fatal("short meta decoded")
			}
			if again := append(m2.encode(nil), rest...); string(again) != string(b) {
				t.Fatal("meta does not round-trip")
			}
		}
	})
}

// TestResumptionOff: with session_resumption: false nothing is resumed,
// and a proxy given a source that does not notify updates does not resume.
func TestResumptionOff(t *testing.T) {
	off := false
	src := &svidSource{upd: make(chan struct{}, 1)}
	cfg := &Config{WorkloadAPISocket: "unix:///x", TLS: TLSConfig{SessionResumption: &off},
		Outbound: []Outbound{{Name: "o", Listen: "127.0.0.1:0", Remote: "127.0.0.1:1", ServerID: pairServerID}}}
	p, err := New(cfg, WithX509Source(src), WithAccessLog(discard{}))
	if err != nil {
		t.Fatal(err)
	}
	if p.tickets != nil || p.sessions != nil {
		t.Fatal("session_resumption: false left resumption on")
	}
	if p := newTestProxy(t, &swapSource{}); p.tickets != nil || p.sessions != nil {
		t.Fatal("resumption on with a source that does not notify its updates")
	}
	sp := newSessionPair(t)
	sp.server.tickets, sp.client.sessions = nil, nil
	sp.mustResume("", false)
	sp.mustResume("", false)
}
