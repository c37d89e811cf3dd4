package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// pubSource publishes revocations for the endpoint under test.
type pubSource struct {
	mu  sync.Mutex
	cur Revocations
	ch  chan struct{}
}

func newPubSource(td string) *pubSource {
	return &pubSource{cur: Revocations{TrustDomain: td}, ch: make(chan struct{})}
}

func (p *pubSource) Revocations(ctx context.Context, after uint64) (Revocations, error) {
	for {
		p.mu.Lock()
		cur, ch := p.cur, p.ch
		p.mu.Unlock()
		if cur.Sequence > after {
			return cur, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cur, nil
		}
	}
}

func (p *pubSource) publish(seq uint64, d policy.DenyList) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur.Sequence, p.cur.DenyList = seq, d
	close(p.ch)
	p.ch = make(chan struct{})
}

// channelPair is authority A publishing on its bundle endpoint and
// authority B (f.m) following it; A federates with B, so B's server ID may
// subscribe.
type channelPair struct {
	f       *fixture
	b       *ca.CA
	pub     *pubSource
	ep      *Endpoint
	refused atomic.Value
	updates atomic.Int32
	// logs: what A's endpoint logged.
	logs syncbuf.Buffer
}

func newChannelPair(t *testing.T) *channelPair {
	t.Helper()
	p := &channelPair{b: newCA(t, tdB), pub: newPubSource(tdA.Name())}
	f := &fixture{a: newCA(t, tdA), st: memstore.New(), aud: &auditLog{}, clk: nil}
	p.f = f
	mB, err := Open(context.Background(), Options{Store: f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(f.aud.append),
		MinRefresh: 10 * time.Second, FetchTimeout: 5 * time.Second,
		OnRevocations: func(context.Context, spiffeid.TrustDomain, map[string]string) { p.updates.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	f.m = mB
	mA, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc((&auditLog{}).append)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mA.Add(context.Background(), Relationship{TrustDomain: tdB, EndpointURL: "https://b.invalid/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/ward/server")}, bundleOf(t, p.b)); err != nil {
		t.Fatal(err)
	}
	p.ep, err = NewEndpoint(EndpointConfig{CA: f.a, Address: "127.0.0.1:0", Revocations: p.pub, Peers: mA,
		OnRevocationRefused: func(r string) { p.refused.Store(r) }, Log: slog.New(slog.NewTextHandler(&p.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.ep.Stop)
	f.url = "https://" + p.ep.Addr(ProfileSPIFFE).String() + "/"
	if _, err := mB.Add(context.Background(), f.rel(f.url), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	return p
}

// serverSVID returns the endpoint SVID source of an authority of c.
func serverSVID(t *testing.T, c *ca.CA) func() (*x509svid.SVID, error) {
	t.Helper()
	ep, err := NewEndpoint(EndpointConfig{CA: c})
	if err != nil {
		t.Fatal(err)
	}
	return ep.SVID
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRevocationChannelDeliversAndPersists(t *testing.T) {
	p := newChannelPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.f.m.RunRevocations(ctx, RevocationClient{SVID: serverSVID(t, p.b), Wait: 5 * time.Second})
	}()
	t.Cleanup(func() { cancel(); <-done })

	p.pub.publish(4, policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x"}, Serials: []string{"0B"}})
	waitFor(t, "the first revocations", func() bool { return len(p.f.m.RemoteDenyLists()["a.example"].SPIFFEIDs) == 1 })
	if got := p.f.m.RemoteDenyLists()["a.example"]; got.Serials[0] != "b" {
		t.Fatalf("serials not normalized: %+v", got)
	}
	// The next one arrives on the open long-poll.
	t0 := time.Now()
	p.pub.publish(5, policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x", "spiffe://a.example/y"}})
	waitFor(t, "the second revocations", func() bool { return len(p.f.m.RemoteDenyLists()["a.example"].SPIFFEIDs) == 2 })
	t.Logf("revocation delivered over the channel in %s", time.Since(t0))
	if st := p.f.m.Revocation(tdA); st.Sequence != 5 || st.LastError != "" {
		t.Fatalf("status: %+v", st)
	}
	if p.updates.Load() < 2 {
		t.Fatalf("OnRevocations called %d times", p.updates.Load())
	}
	if n := strings.Count(strings.Join(p.f.aud.ops(), " "), "federation.revocations:ok"); n < 2 {
		t.Fatalf("received updates not audited: %v", p.f.aud.ops())
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(func() *Manager { return p.f.m }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]float64{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			seen[mf.GetName()] = mm.GetGauge().GetValue()
		}
	}
	if seen["ward_federation_revocations_sequence"] != 5 || seen["ward_federation_revocation_channel_error"] != 0 {
		t.Fatalf("revocation metrics: %v", seen)
	}
	if _, ok := seen["ward_federation_revocations_age_seconds"]; !ok {
		t.Fatalf("revocation metrics: %v", seen)
	}
	// Partitioned (endpoint gone) and restarted: the last received stay.
	p.ep.Stop()
	var removed atomic.Int32
	m2, err := Open(context.Background(), Options{Store: p.f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(p.f.aud.append),
		OnRevocations: func(context.Context, spiffeid.TrustDomain, map[string]string) { removed.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.RemoteDenyLists()["a.example"]; len(got.SPIFFEIDs) != 2 || m2.Revocation(tdA).Sequence != 5 {
		t.Fatalf("after a restart: %+v", got)
	}
	// Removing the relationship drops them.
	if err := m2.Remove(context.Background(), tdA); err != nil {
		t.Fatal(err)
	}
	if got := m2.RemoteDenyLists(); len(got) != 0 {
		t.Fatalf("after remove: %+v", got)
	}
	if removed.Load() != 1 {
		t.Fatalf("removing the relationship did not republish: %d", removed.Load())
	}
}

func TestRevocationChannelRefusesClients(t *testing.T) {
	p := newChannelPair(t)
	tdC := spiffeid.RequireTrustDomainFromString("c.example")
	c := newCA(t, tdC)
	get := func(svid func() (*x509svid.SVID, error)) (int, string) {
		t.Helper()
		tc := tlsconfig.TLSClientConfig(bundleOf(t, p.f.a), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(tdA, "/ward/server")))
		if svid != nil {
			tc = tlsconfig.MTLSClientConfig(svidFunc(svid), bundleOf(t, p.f.a), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(tdA, "/ward/server")))
		}
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		resp, err := cl.Get(p.f.url[:len(p.f.url)-1] + RevocationPath + "?wait=0s")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name   string
		svid   func() (*x509svid.SVID, error)
		code   int
		reason string
	}{
		{"no client certificate", nil, 401, "no_client_certificate"},
		{"a trust domain A does not federate with", serverSVID(t, c), 403, "not_federated"},
		{"a workload of B, not its server", workloadSVID(t, p.b, "/web"), 403, "not_a_server"},
	} {
		code, body := get(tc.svid)
		if code != tc.code || p.refused.Load() != tc.reason {
			t.Errorf("%s: %d %s (reason %v)", tc.name, code, body, p.refused.Load())
		}
	}
	// B's server is served, and only A's own entries.
	p.pub.publish(2, policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x", "spiffe://c.example/z"}})
	code, body := get(serverSVID(t, p.b))
	var r Revocations
	if code != 200 || json.Unmarshal([]byte(body), &r) != nil || r.Sequence != 2 || len(r.DenyList.SPIFFEIDs) != 1 || r.TrustDomain != "a.example" {
		t.Fatalf("B's server: %d %s", code, body)
	}
	// Bundle fetches stay anonymous.
	if _, err := p.f.m.Refresh(context.Background(), tdA); err != nil {
		t.Fatalf("anonymous bundle fetch: %v", err)
	}
}

func workloadSVID(t *testing.T, c *ca.CA, path string) func() (*x509svid.SVID, error) {
	t.Helper()
	return func() (*x509svid.SVID, error) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		chain, err := c.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(c.TrustDomain(), path), PublicKey: k.Public()})
		if err != nil {
			return nil, err
		}
		return &x509svid.SVID{ID: spiffeid.RequireFromPath(c.TrustDomain(), path), Certificates: chain, PrivateKey: k}, nil
	}
}

func TestAcceptRevocationsRefusesAttacks(t *testing.T) {
	p := newChannelPair(t)
	m := p.f.m
	ctx := context.Background()
	send := func(v any) error {
		b, _ := json.Marshal(v)
		return m.AcceptRevocations(ctx, tdA, b)
	}
	if err := send(Revocations{TrustDomain: "a.example", Sequence: 7, DenyList: policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x"}}}); err != nil {
		t.Fatal(err)
	}
	before := len(p.f.aud.ops())
	for name, body := range map[string][]byte{
		"an entry of a third trust domain":   mustJSON(Revocations{TrustDomain: "a.example", Sequence: 8, DenyList: policy.DenyList{SPIFFEIDs: []string{"spiffe://c.example/db"}}}),
		"an update for another trust domain": mustJSON(Revocations{TrustDomain: "c.example", Sequence: 8, DenyList: policy.DenyList{SPIFFEIDs: []string{"spiffe://c.example/db"}}}),
		"a replayed older sequence":          mustJSON(Revocations{TrustDomain: "a.example", Sequence: 6}),
		"the same sequence, other content":   mustJSON(Revocations{TrustDomain: "a.example", Sequence: 7}),
		"an oversized update":                append([]byte(`{"trust_domain":"a.example","sequence":9,"deny_list":{"serials":["`), []byte(strings.Repeat("a", MaxRevocationUpdate))...),
		"unknown fields":                     []byte(`{"trust_domain":"a.example","sequence":9,"deny_list":{},"extra":1}`),
		"a bad key ID":                       mustJSON(Revocations{TrustDomain: "a.example", Sequence: 9, DenyList: policy.DenyList{TaintedKeys: []string{"xyz"}}}),
	} {
		if err := m.AcceptRevocations(ctx, tdA, body); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	refused := 0
	for _, op := range p.f.aud.ops()[before:] {
		if op == "federation.revocations:denied" {
			refused++
		}
	}
	if refused != 7 {
		t.Fatalf("%d refusals audited, want 7: %v", refused, p.f.aud.ops()[before:])
	}
	if got := m.RemoteDenyLists()["a.example"]; len(got.SPIFFEIDs) != 1 || got.SPIFFEIDs[0] != "spiffe://a.example/x" || m.Revocation(tdA).Sequence != 7 {
		t.Fatalf("a refused update changed the state: %+v", got)
	}
	// The same update again is nothing new; a trust domain without a
	// relationship is refused.
	if err := send(Revocations{TrustDomain: "a.example", Sequence: 7, DenyList: policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x"}}}); err != nil {
		t.Fatal(err)
	}
	if err := m.AcceptRevocations(ctx, spiffeid.RequireTrustDomainFromString("c.example"), mustJSON(Revocations{TrustDomain: "c.example", Sequence: 1})); err == nil {
		t.Fatal("revocations of a trust domain without a relationship accepted")
	}
	// The audit log down: not installed.
	p.f.aud.fail.Store(true)
	if err := send(Revocations{TrustDomain: "a.example", Sequence: 8}); err == nil || m.Revocation(tdA).Sequence != 7 {
		t.Fatalf("installed without its audit event: %v", err)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// A peer of another SPIFFE implementation (its endpoint answers any path
// with its bundle) has no revocation channel: that is an error of the
// channel, not a refused update, so nothing is audited.
func TestRevocationsOfANonWardPeer(t *testing.T) {
	f := newFixture(t)
	f.fake.serve(200, marshal(t, bundleOf(t, f.a)))
	if _, err := f.m.Add(context.Background(), f.rel(f.fakeU), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	before := len(f.aud.ops())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.m.RunRevocations(ctx, RevocationClient{SVID: serverSVID(t, newCA(t, tdB)), Wait: time.Second})
	}()
	waitFor(t, "the channel error", func() bool { return f.m.Revocation(tdA).LastError != "" })
	cancel()
	<-done
	if st := f.m.Revocation(tdA); st.Has || !strings.Contains(st.LastError, "no ward revocation channel") {
		t.Fatalf("status: %+v", st)
	}
	if ops := f.aud.ops()[before:]; len(ops) != 0 {
		t.Fatalf("audited: %v", ops)
	}
}

// TestRevocationChannelDenyListOverLimit: a deny-list too big for the
// channel (more than MaxRevocationUpdate of JSON, ~30,000 serials) is
// refused by the follower, which says why in its channel status, and the
// publisher logs the cause and the fix and counts it
// (own_deny_list_over_limit) instead of failing silently; once the list
// shrinks, the follower takes it again.
func TestRevocationChannelDenyListOverLimit(t *testing.T) {
	p := newChannelPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.f.m.RunRevocations(ctx, RevocationClient{SVID: serverSVID(t, p.b), Wait: 5 * time.Second})
	}()
	t.Cleanup(func() { cancel(); <-done })
	var big policy.DenyList
	for i := range 32000 {
		big.Serials = append(big.Serials, fmt.Sprintf("f%031x", i))
	}
	p.pub.publish(7, big)
	waitFor(t, "the follower refusing the oversized update", func() bool {
		return strings.Contains(p.f.m.Revocation(tdA).LastError, fmt.Sprint(MaxRevocationUpdate))
	})
	if st := p.f.m.Revocation(tdA); st.Sequence == 7 {
		t.Fatalf("oversized update accepted: %+v", st)
	}
	waitFor(t, "the publisher logging it", func() bool {
		return strings.Contains(p.logs.String(), "too big for the federation revocation channel")
	})
	if l := p.logs.String(); !strings.Contains(l, "max_jwt_svids_per_agent") || !strings.Contains(l, "bytes=") {
		t.Fatalf("the log names neither the fix nor the size: %s", l)
	}
	if r, _ := p.refused.Load().(string); r != "own_deny_list_over_limit" {
		t.Fatalf("counted as %q, want own_deny_list_over_limit", r)
	}
	p.pub.publish(8, policy.DenyList{Serials: big.Serials[:1024]})
	waitFor(t, "the shrunk list taken", func() bool { return p.f.m.Revocation(tdA).Sequence == 8 })
}
