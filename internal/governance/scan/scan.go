package scan

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Scanner. The zero value scans with the defaults.
type Options struct {
	// ServerName is sent as SNI and checked against the certificate's DNS
	// and IP names; empty: the host of the target when it is a name.
	ServerName string
	// SPIFFEID, when set, must be the URI SAN of the server's certificate.
	SPIFFEID string
	// Roots verify the server's chain; nil: the system roots.
	Roots *x509.CertPool
	// RootsName names Roots in results ("bundle /etc/ward/bundle.pem",
	// "authority prod.example"); empty: "system roots" when Roots is nil.
	RootsName string
	// Timeout bounds each connection (dial, write, read): default 5s.
	Timeout time.Duration
	// Concurrency bounds the connections one endpoint's scan has open at
	// once: default 8.
	Concurrency int
	// Now is the clock certificates are judged by (tests): default time.Now.
	Now func() time.Time
	// CheckCRLs fetches the CRLs the chain's certificates name (http and
	// https only, bounded: crl.go) and reports a certificate they list as
	// revoked, and a CRL that cannot be fetched or trusted.
	CheckCRLs bool
	// Dial opens the TCP connections (tests): default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Scanner scans TLS endpoints.
type Scanner struct{ opts Options }

// New returns a Scanner with opts' defaults filled in.
func New(opts Options) *Scanner {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Dial == nil {
		d := &net.Dialer{}
		opts.Dial = d.DialContext
	}
	if opts.RootsName == "" && opts.Roots == nil {
		opts.RootsName = "system roots"
	}
	return &Scanner{opts: opts}
}

// ScanAll scans every target, at most parallel at once (0: 4), and
// returns the results in the targets' order.
func (s *Scanner) ScanAll(ctx context.Context, targets []string, parallel int) []*Result {
	if parallel <= 0 {
		parallel = 4
	}
	out := make([]*Result, len(targets))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i] = s.Scan(ctx, t)
		}()
	}
	wg.Wait()
	return out
}

// endpoint is the state of one endpoint's scan.
type endpoint struct {
	s      *Scanner
	addr   string
	sni    string
	sem    chan struct{}
	probes atomic.Int64
}

// Scan scans one endpoint, HOST:PORT. It never fails: an endpoint that
// cannot be reached has Result.Error set and a finding saying so.
func (s *Scanner) Scan(ctx context.Context, target string) *Result {
	start := time.Now()
	r := &Result{Target: target, Started: s.opts.Now().UTC()}
	defer func() {
		r.DurationMS = float64(time.Since(start).Microseconds()) / 1000
		r.Findings = grade(r, s.opts)
	}()
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		r.Error = fmt.Sprintf("target %q: %v (give HOST:PORT)", target, err)
		return r
	}
	e := &endpoint{s: s, addr: target, sem: make(chan struct{}, s.opts.Concurrency)}
	e.sni = s.opts.ServerName
	if e.sni == "" && net.ParseIP(host) == nil {
		e.sni = host
	}
	r.ServerName = e.sni
	defer func() { r.Probes = int(e.probes.Load()) }()

	// Reachable at all? One TCP connection, so that a dead endpoint costs
	// one timeout, not one per probe.
	c, err := e.dial(ctx)
	if err != nil {
		r.Error = fmt.Sprintf("connect to %s: %v", target, err)
		return r
	}
	c.Close()

	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		suites = map[Version][]uint16{}
		errs   = map[Version]error{}
	)
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	// Suites per version: the candidates in chunks, each enumerated on its
	// own (offer, note the server's pick, offer the rest again), so the
	// matrix costs one probe per accepted suite plus one per chunk.
	for _, v := range Versions {
		cands := suitesFor(v)
		n := 1
		if v < TLS13 {
			n = 4
		}
		for _, chunk := range split(cands, n) {
			run(func() {
				got, err := e.enumerateSuites(ctx, v, chunk)
				mu.Lock()
				suites[v] = append(suites[v], got...)
				if err != nil && errs[v] == nil {
					errs[v] = err
				}
				mu.Unlock()
			})
		}
	}
	// TLS 1.3 groups, and whether the post-quantum hybrid wins when the
	// client prefers it and when the client lists it last.
	var groups13 []uint16
	var pqFirst, pqLast uint16
	for _, chunk := range split(groupsFor(TLS13), 3) {
		run(func() {
			got := e.enumerateGroups13(ctx, chunk)
			mu.Lock()
			groups13 = append(groups13, got...)
			mu.Unlock()
		})
	}
	run(func() { pqFirst = e.pickGroup13(ctx, pqOrder(true)) })
	run(func() { pqLast = e.pickGroup13(ctx, pqOrder(false)) })
	// TLS 1.2 curves (and the cleartext flight: chain, OCSP, client auth
	// for servers Go's client cannot speak to).
	var curves []uint16
	var flight *serverHello
	run(func() {
		var f *serverHello
		curves, f = e.enumerateCurves(ctx, TLS12)
		mu.Lock()
		if flight == nil {
			flight = f
		}
		mu.Unlock()
	})
	var hs *handshakeResult
	run(func() { hs = e.goHandshake(ctx) })
	wg.Wait()

	// A server that speaks TLS 1.3 to Go's client but answered no hello
	// without a key share (no HelloRetryRequest): its suites, offering an
	// x25519 key share.
	if hs != nil && hs.state.Version == tls.VersionTLS13 && len(suites[TLS13]) == 0 {
		if ks, err := x25519Share(); err == nil {
			suites[TLS13], errs[TLS13] = e.enumerateSuites(ctx, TLS13, suitesFor(TLS13), ks)
		}
	}

	// Older-only servers: curves and the flight from their best version.
	if len(curves) == 0 {
		for _, v := range []Version{TLS11, TLS10, SSL30} {
			if hasECDHE(suites[v]) {
				curves, flight = e.enumerateCurves(ctx, v)
				break
			}
		}
	}
	if flight == nil && (hs == nil || len(hs.certs) == 0) {
		for _, v := range []Version{TLS12, TLS11, TLS10, SSL30} {
			if len(suites[v]) > 0 {
				flight, _ = e.probe(ctx, &hello{version: v, suites: suites[v], groups: groupsFor(v), serverName: e.sni}, true)
				break
			}
		}
	}

	// Whose order decides: the accepted suites offered in two opposite
	// orders; the same pick both times is the server's preference.
	order := map[Version][2]uint16{}
	for _, v := range Versions {
		if len(suites[v]) < 2 {
			continue
		}
		run(func() {
			asc := slices.Sorted(slices.Values(suites[v]))
			desc := slices.Clone(asc)
			slices.Reverse(desc)
			var picks [2]uint16
			for i, offer := range [][]uint16{asc, desc} {
				if sh, err := e.probe(ctx, &hello{version: v, suites: offer, groups: groupsFor(v), serverName: e.sni}, false); err == nil && sh.version == v {
					picks[i] = sh.suite
				}
			}
			mu.Lock()
			order[v] = picks
			mu.Unlock()
		})
	}
	wg.Wait()

	for _, v := range Versions {
		got := suites[v]
		slices.Sort(got)
		p := Protocol{Version: v, Offered: len(got) > 0}
		for _, id := range got {
			p.Suites = append(p.Suites, SuiteByID(id))
		}
		if picks, ok := order[v]; ok && picks[0] != 0 && picks[0] == picks[1] {
			p.ServerOrder, p.Preferred = true, SuiteByID(picks[0]).Name
		} else if len(got) == 1 {
			p.Preferred = SuiteByID(got[0]).Name
		}
		if v < TLS13 && v == highestLegacy(suites) {
			for _, c := range curves {
				p.Groups = append(p.Groups, GroupByID(c))
			}
		}
		if v == TLS13 && p.Offered {
			for _, g := range groups13 {
				p.Groups = append(p.Groups, GroupByID(g))
			}
			slices.SortStableFunc(p.Groups, func(a, b Group) int { return groupRank(a.ID) - groupRank(b.ID) })
		}
		if err := errs[v]; err != nil && !p.Offered {
			p.Note = probeNote(err)
		}
		r.Protocols = append(r.Protocols, p)
	}
	r.PostQuantum = PostQuantum{Group: GroupByID(0x11EC).Name}
	for _, g := range groups13 {
		if g == 0x11EC {
			r.PostQuantum.Offered = true
		}
	}
	r.PostQuantum.SelectedWhenClientPrefers = pqFirst == 0x11EC
	r.PostQuantum.Preferred = pqLast == 0x11EC
	if pqFirst != 0 {
		r.PostQuantum.ChosenWhenClientPrefers = GroupByID(pqFirst).Name
	}
	if pqLast != 0 {
		r.PostQuantum.ChosenWhenListedLast = GroupByID(pqLast).Name
	}
	e.finish(ctx, r, hs, flight)
	if !slices.ContainsFunc(r.Protocols, func(p Protocol) bool { return p.Offered }) && r.Chain == nil {
		// Nothing spoke TLS: say why, rather than grade an empty result.
		why := "no ClientHello of any version was accepted"
		if hs != nil && hs.err != nil {
			why += "; Go's TLS client: " + hs.err.Error()
		}
		for _, p := range r.Protocols {
			if p.Note != "" {
				why += "; " + p.Version.String() + ": " + p.Note
				break
			}
		}
		r.Error = "no TLS: " + why
	}
	return r
}

func highestLegacy(suites map[Version][]uint16) Version {
	for _, v := range []Version{TLS12, TLS11, TLS10, SSL30} {
		if hasECDHE(suites[v]) {
			return v
		}
	}
	return 0
}

func hasECDHE(ids []uint16) bool {
	for _, id := range ids {
		if SuiteByID(id).ecdhe() {
			return true
		}
	}
	return false
}

// groupRank orders groups as allGroups lists them.
func groupRank(id uint16) int {
	for i, g := range allGroups {
		if g.ID == id {
			return i
		}
	}
	return len(allGroups)
}

// pqOrder is a client's group list with the hybrid first (a modern
// client) or last (to see whether the server itself prefers it).
func pqOrder(first bool) []uint16 {
	classic := []uint16{0x001D, 0x0017, 0x0018, 0x0019}
	if first {
		return append([]uint16{0x11EC}, classic...)
	}
	return append(classic, 0x11EC)
}

func split(ids []uint16, n int) [][]uint16 {
	if n > len(ids) {
		n = len(ids)
	}
	out := make([][]uint16, n)
	for i, id := range ids {
		out[i%n] = append(out[i%n], id)
	}
	return out
}

// probeNote says why a version looks not offered, when that was not a
// plain refusal (an alert or a closed connection).
func probeNote(err error) string {
	var a *AlertError
	if errors.As(err, &a) || errors.Is(err, errClosed) {
		return ""
	}
	return err.Error()
}

func (e *endpoint) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.s.opts.Timeout)
	defer cancel()
	return e.s.opts.Dial(ctx, "tcp", e.addr)
}

// probe is one short connection: send h, read the answer, close.
func (e *endpoint) probe(ctx context.Context, h *hello, flight bool) (*serverHello, error) {
	rec, err := h.marshal()
	if err != nil {
		return nil, err
	}
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.sem }()
	e.probes.Add(1)
	c, err := e.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetDeadline(time.Now().Add(e.s.opts.Timeout))
	if _, err := c.Write(rec); err != nil {
		return nil, readErr(err)
	}
	return readServerHello(c, flight)
}

// enumerateSuites offers chunk in version v again and again, each time
// without the suite the server picked, until it refuses.
func (e *endpoint) enumerateSuites(ctx context.Context, v Version, chunk []uint16, shares ...keyShare) ([]uint16, error) {
	offer := slices.Clone(chunk)
	var got []uint16
	groups := groupsFor(v)
	for len(offer) > 0 {
		sh, err := e.probe(ctx, &hello{version: v, suites: offer, groups: groups, serverName: e.sni, keyShares: shares}, false)
		if err != nil {
			return got, err
		}
		i := slices.Index(offer, sh.suite)
		if sh.version != v || i < 0 {
			return got, nil // answered with another version, or a suite not offered
		}
		got = append(got, sh.suite)
		offer = slices.Delete(offer, i, i+1)
	}
	return got, nil
}

// enumerateGroups13 offers chunk as TLS 1.3 groups without key shares:
// a server that accepts answers with a HelloRetryRequest naming its pick.
func (e *endpoint) enumerateGroups13(ctx context.Context, chunk []uint16) []uint16 {
	offer := slices.Clone(chunk)
	var got []uint16
	for len(offer) > 0 {
		g := e.pickGroup13(ctx, offer)
		i := slices.Index(offer, g)
		if i < 0 {
			return got
		}
		got = append(got, g)
		offer = slices.Delete(offer, i, i+1)
	}
	return got
}

// pickGroup13 returns the group the server picks among groups in TLS 1.3
// (0: none, or no TLS 1.3).
func (e *endpoint) pickGroup13(ctx context.Context, groups []uint16) uint16 {
	sh, err := e.probe(ctx, &hello{version: TLS13, suites: suitesFor(TLS13), groups: groups, serverName: e.sni}, false)
	if err != nil || sh.version != TLS13 {
		return 0
	}
	return sh.group
}

// enumerateCurves finds the ECDHE curves of version v (TLS 1.2 and
// below) from the ServerKeyExchange, offering every ECDHE suite. The first
// flight read is returned too (certificates, OCSP, CertificateRequest).
func (e *endpoint) enumerateCurves(ctx context.Context, v Version) ([]uint16, *serverHello) {
	var ecdhe []uint16
	for _, id := range suitesFor(v) {
		if SuiteByID(id).ecdhe() {
			ecdhe = append(ecdhe, id)
		}
	}
	offer := groupsFor(v)
	var got []uint16
	var first *serverHello
	for len(offer) > 0 {
		sh, err := e.probe(ctx, &hello{version: v, suites: ecdhe, groups: offer, serverName: e.sni}, true)
		if err != nil || sh.version != v {
			break
		}
		if first == nil {
			first = sh
		}
		i := slices.Index(offer, sh.curve)
		if i < 0 {
			break
		}
		got = append(got, sh.curve)
		offer = slices.Delete(offer, i, i+1)
	}
	return got, first
}

// x25519Share is a TLS 1.3 key share of a fresh x25519 key.
func x25519Share() (keyShare, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return keyShare{}, err
	}
	return keyShare{group: 0x001D, data: k.PublicKey().Bytes()}, nil
}
