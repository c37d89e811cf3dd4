package federation

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/policy"
)

// Attacks on the bundle endpoint's resources (endpointlimits.go).

// refusals counts OnConnRefused by reason.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

func startPlainEndpoint(t *testing.T, ref *refusals) string {
	t.Helper()
	ep, err := NewEndpoint(EndpointConfig{CA: newCA(t, tdA), Address: "127.0.0.1:0", OnConnRefused: ref.add})
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	return ep.Addr(ProfileSPIFFE).String()
}

func tlsHandshake(addr string) (*tls.Conn, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// One source opening connections that never finish their TLS handshake
// (slowloris) holds at most endpointMaxPendingPerSource of them: the next
// is closed at accept, before any TLS work, and counted; once the source's
// idle connections close, it is served again.
func TestEndpointRefusesSourceOverPendingConnections(t *testing.T) {
	ref := &refusals{}
	addr := startPlainEndpoint(t, ref)
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	for i := 0; i < endpointMaxPendingPerSource; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	if c, err := tlsHandshake(addr); err == nil {
		c.Close()
		t.Fatalf("a source holding %d connections in their handshake got one more handshake", endpointMaxPendingPerSource)
	}
	if n := ref.get(RefusedEndpointPendingPerSource); n != 1 {
		t.Fatalf("refused %s = %d, want 1", RefusedEndpointPendingPerSource, n)
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	waitFor(t, "a handshake once the idle connections closed", func() bool {
		c, err := tlsHandshake(addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// One source keeping connections open (kept alive after a bundle fetch)
// holds at most endpointMaxPerSource of them.
func TestEndpointRefusesSourceOverOpenConnections(t *testing.T) {
	ref := &refusals{}
	addr := startPlainEndpoint(t, ref)
	var open []net.Conn
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	for i := 0; i < endpointMaxPerSource; i++ {
		c, err := tlsHandshake(addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		open = append(open, c)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("bundle fetch %d: %s", i, resp.Status)
		}
	}
	if c, err := tlsHandshake(addr); err == nil {
		c.Close()
		t.Fatalf("a source holding %d open connections got one more", endpointMaxPerSource)
	}
	if n := ref.get(RefusedEndpointPerSource); n != 1 {
		t.Fatalf("refused %s = %d, want 1", RefusedEndpointPerSource, n)
	}
}

// gatedSource counts the long-polls waiting in Revocations.
type gatedSource struct {
	*pubSource
	waiting atomic.Int32
}

func (g *gatedSource) Revocations(ctx context.Context, after uint64) (Revocations, error) {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	return g.pubSource.Revocations(ctx, after)
}

// blockingCheckpoints answers the witness only once released.
type blockingCheckpoints struct {
	inner   CheckpointSource
	waiting atomic.Int32
	release chan struct{}
}

func (b *blockingCheckpoints) LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error) {
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return b.inner.LatestCheckpoint(ctx, atLeast)
}

func (b *blockingCheckpoints) ConsistencyProof(ctx context.Context, o, n uint64) ([][]byte, error) {
	return b.inner.ConsistencyProof(ctx, o, n)
}

// peerEndpoint is authority A's bundle endpoint (federated with B: mA) and
// an HTTP client authenticated as B's server.
type peerEndpoint struct {
	mA      *Manager
	pub     *gatedSource
	cps     *blockingCheckpoints
	base    string
	client  func() *http.Client
	revRef  refusals
	witRef  refusals
	release sync.Once
	ep      *Endpoint
}

func newPeerEndpoint(t *testing.T) *peerEndpoint {
	t.Helper()
	a, b := newCA(t, tdA), newCA(t, tdB)
	mA, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc((&auditLog{}).append)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mA.Add(context.Background(), Relationship{TrustDomain: tdB, EndpointURL: "https://b.invalid/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/ward/server")}, bundleOf(t, b)); err != nil {
		t.Fatal(err)
	}
	p := &peerEndpoint{mA: mA, pub: &gatedSource{pubSource: newPubSource(tdA.Name())}}
	sl := &switchSource{}
	sl.use(newAuditLog(t, newKey(t), tdA, 3, "x"), nil)
	p.cps = &blockingCheckpoints{inner: sl, release: make(chan struct{})}
	t.Cleanup(func() { p.release.Do(func() { close(p.cps.release) }) })
	ep, err := NewEndpoint(EndpointConfig{CA: a, Address: "127.0.0.1:0", Revocations: p.pub, Peers: mA, Checkpoints: p.cps,
		OnRevocationRefused: p.revRef.add, OnWitnessRefused: p.witRef.add})
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	p.base = "https://" + ep.Addr(ProfileSPIFFE).String()
	p.ep = ep
	tc := tlsconfig.MTLSClientConfig(svidFunc(serverSVID(t, b)), bundleOf(t, a), tlsconfig.AuthorizeID(ep.ServerID()))
	p.client = func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 30 * time.Second}
	}
	return p
}

func (p *peerEndpoint) get(path string) (int, string, error) {
	resp, err := p.client().Get(p.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// A federated peer (or its stolen server key) cannot hold an unbounded
// number of revocation long-polls open: past maxLongPollsPerPeer the
// endpoint answers 429 at once.
func TestRevocationLongPollsPerPeerBounded(t *testing.T) {
	p := newPeerEndpoint(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { p.pub.publish(1, policy.DenyList{}); wg.Wait() })
	for i := 0; i < maxLongPollsPerPeer; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = p.get(RevocationPath + "?wait=20s")
		}()
	}
	waitFor(t, "the long-polls to wait", func() bool { return p.pub.waiting.Load() == maxLongPollsPerPeer })
	code, body, err := p.get(RevocationPath + "?wait=1s")
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusTooManyRequests {
		t.Fatalf("long-poll %d of one peer: %d %s, want 429", maxLongPollsPerPeer+1, code, body)
	}
	if n := p.revRef.get(RefusedBusy); n != 1 {
		t.Fatalf("refused busy = %d", n)
	}
}

// Witness requests of one peer are bounded the same way
// (maxWitnessPerPeer): each may compute a consistency proof.
func TestWitnessRequestsPerPeerBounded(t *testing.T) {
	p := newPeerEndpoint(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { p.release.Do(func() { close(p.cps.release) }); wg.Wait() })
	for i := 0; i < maxWitnessPerPeer; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = p.get(WitnessPath + "?from=1")
		}()
	}
	waitFor(t, "the witness requests to wait", func() bool { return p.cps.waiting.Load() == maxWitnessPerPeer })
	done := make(chan struct{})
	var code int
	var body string
	var err error
	go func() { defer close(done); code, body, err = p.get(WitnessPath + "?from=1") }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		// Old behaviour: the request waits with the others; let them go.
		p.release.Do(func() { close(p.cps.release) })
		<-done
	}
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusTooManyRequests {
		t.Fatalf("witness request %d of one peer: %d %.200s, want 429", maxWitnessPerPeer+1, code, body)
	}
	if n := p.witRef.get(RefusedBusy); n != 1 {
		t.Fatalf("refused busy = %d", n)
	}
}

// A peer whose relationship is removed while its long-poll waits gets no
// revocations at the end of the wait: the peer is checked again before the
// answer.
func TestRevocationLongPollRefusedAfterRelationshipRemoved(t *testing.T) {
	p := newPeerEndpoint(t)
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, body, err := p.get(RevocationPath + "?wait=20s")
		res <- result{code, body, err}
	}()
	waitFor(t, "the long-poll to wait", func() bool { return p.pub.waiting.Load() == 1 })
	if err := p.mA.Remove(context.Background(), tdB); err != nil {
		t.Fatal(err)
	}
	p.pub.publish(7, policy.DenyList{})
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.code != http.StatusForbidden {
		t.Fatalf("long-poll of a peer removed during the wait: %d %.200s, want 403", r.code, r.body)
	}
}

// A peer repeating requests that answer at once (a long-poll with wait=0,
// on a kept-alive connection) makes the authority read its policy store
// each time: past peerRequestBurst requests in a row it is answered 429
// until its budget refills (here never: the clock stands still).
func TestPeerRequestsInARowBounded(t *testing.T) {
	p := newPeerEndpoint(t)
	t0 := time.Now()
	p.ep.slots.mu.Lock()
	p.ep.slots.now = func() time.Time { return t0 }
	p.ep.slots.mu.Unlock()
	tr := &http.Transport{TLSClientConfig: p.client().Transport.(*http.Transport).TLSClientConfig}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	get := func() int {
		resp, err := client.Get(p.base + RevocationPath + "?wait=0s")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := 0; i < peerRequestBurst; i++ {
		if code := get(); code != http.StatusOK {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if code := get(); code != http.StatusTooManyRequests {
		t.Fatalf("request %d in a row of one peer: %d, want 429", peerRequestBurst+1, code)
	}
	// Once the budget refills, the peer is served again.
	p.ep.slots.mu.Lock()
	p.ep.slots.now = func() time.Time { return t0.Add(peerRequestRefill) }
	p.ep.slots.mu.Unlock()
	if code := get(); code != http.StatusOK {
		t.Fatalf("after a refill: %d", code)
	}
}

// countingHandler counts log records by level.
type countingHandler struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[slog.Level]int{}
	}
	h.n[r.Level]++
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(l slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[l]
}

// Anyone may send requests without a certificate to the revocation
// channel and the witness, as fast as it likes on a kept-alive
// connection: each refusal is counted, but logged as a warning at most
// once per 10 s (a flood must not fill the authority's log).
func TestUnauthenticatedFloodDoesNotFloodTheLog(t *testing.T) {
	mA, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc((&auditLog{}).append)})
	if err != nil {
		t.Fatal(err)
	}
	h := &countingHandler{}
	var refused atomic.Int32
	ep, err := NewEndpoint(EndpointConfig{CA: newCA(t, tdA), Address: "127.0.0.1:0", Revocations: newPubSource(tdA.Name()), Peers: mA,
		Log: slog.New(h), OnRevocationRefused: func(string) { refused.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ep.slots.now = func() time.Time { return t0 }
	if err := ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	const n = 50
	for i := 0; i < n; i++ {
		resp, err := client.Get("https://" + ep.Addr(ProfileSPIFFE).String() + RevocationPath)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d without a certificate: %d", i, resp.StatusCode)
		}
	}
	if refused.Load() != n {
		t.Fatalf("refusals counted: %d, want %d", refused.Load(), n)
	}
	if w := h.count(slog.LevelWarn); w != 1 {
		t.Fatalf("%d requests without a certificate logged %d warnings, want 1", n, w)
	}
}

// gatedCatalog counts the catalog long-polls waiting.
type gatedCatalog struct {
	waiting atomic.Int32
	release chan struct{}
}

func (g *gatedCatalog) WaitCatalog(ctx context.Context, after uint64) (Catalog, error) {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	return Catalog{Sequence: after + 1}, nil
}

// The catalog channel is a long-poll like the revocation channel: a peer
// holds at most maxLongPollsPerPeer of them, and one whose relationship is
// removed during the wait gets no catalog.
func TestCatalogLongPollsPerPeerBoundedAndRechecked(t *testing.T) {
	a, b := newCA(t, tdA), newCA(t, tdB)
	mA, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc((&auditLog{}).append)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mA.Add(context.Background(), Relationship{TrustDomain: tdB, EndpointURL: "https://b.invalid/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/ward/server")}, bundleOf(t, b)); err != nil {
		t.Fatal(err)
	}
	cat := &gatedCatalog{release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(cat.release) }) }
	var refused refusals
	ep, err := NewEndpoint(EndpointConfig{CA: a, Address: "127.0.0.1:0", Revocations: newPubSource(tdA.Name()), Catalog: cat, Peers: mA,
		OnRevocationRefused: refused.add})
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(release)
	tc := tlsconfig.MTLSClientConfig(svidFunc(serverSVID(t, b)), bundleOf(t, a), tlsconfig.AuthorizeID(ep.ServerID()))
	get := func() (int, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 30 * time.Second}
		resp, err := c.Get("https://" + ep.Addr(ProfileSPIFFE).String() + CatalogPath + "?wait=20s")
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	codes := make(chan int, maxLongPollsPerPeer)
	for i := 0; i < maxLongPollsPerPeer; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := get()
			codes <- code
		}()
	}
	waitFor(t, "the catalog long-polls to wait", func() bool { return cat.waiting.Load() == maxLongPollsPerPeer })
	if code, err := get(); err != nil || code != http.StatusTooManyRequests {
		t.Fatalf("catalog long-poll %d of one peer: %d %v, want 429", maxLongPollsPerPeer+1, code, err)
	}
	if err := mA.Remove(context.Background(), tdB); err != nil {
		t.Fatal(err)
	}
	release()
	for i := 0; i < maxLongPollsPerPeer; i++ {
		if code := <-codes; code != http.StatusForbidden {
			t.Fatalf("catalog long-poll of a peer removed during the wait: %d, want 403", code)
		}
	}
}
