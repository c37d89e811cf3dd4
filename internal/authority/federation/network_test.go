package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// networkPair is authority A serving its tunnels (mA, relationship with B
// sharing the network when shareA) and authority B (f.m) following them
// (its relationship with A sharing the network when shareB).
func newNetworkPair(t *testing.T, shareA, shareB bool) *catalogPair {
	t.Helper()
	p := &catalogPair{b: newCA(t, tdB), audA: &auditLog{}}
	f := &fixture{a: newCA(t, tdA), st: memstore.New(), aud: &auditLog{}}
	p.f = f
	var err error
	if f.m, err = Open(context.Background(), Options{Store: f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(f.aud.append),
		MinRefresh: 10 * time.Second, FetchTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if p.mA, err = Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc(p.audA.append)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.mA.Add(context.Background(), Relationship{TrustDomain: tdB, EndpointURL: "https://b.invalid/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/ward/server"), Network: shareA}, bundleOf(t, p.b)); err != nil {
		t.Fatal(err)
	}
	p.ep, err = NewEndpoint(EndpointConfig{CA: f.a, Address: "127.0.0.1:0", Revocations: newPubSource(tdA.Name()), Peers: p.mA,
		Catalog: p.mA, Network: p.mA, OnRevocationRefused: func(r string) { p.refused.Store(r) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.ep.Stop)
	f.url = "https://" + p.ep.Addr(ProfileSPIFFE).String() + "/"
	rel := f.rel(f.url)
	rel.Network = shareB
	if _, err := f.m.Add(context.Background(), rel, bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	return p
}

func wgKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func tunnelA(name string, key byte, prefixes ...string) NetworkTunnel {
	return NetworkTunnel{AgentID: "spiffe://a.example/ward/agent/" + name, PublicKey: wgKey(key), Endpoint: "192.0.2." + fmt.Sprint(key) + ":51820",
		AllowedIPs: prefixes}
}

func runNetwork(t *testing.T, p *catalogPair) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.f.m.RunNetwork(ctx, RevocationClient{SVID: serverSVID(t, p.b), Wait: 5 * time.Second})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestNetworkTravelsAndGoes(t *testing.T) {
	p := newNetworkPair(t, true, true)
	p.mA.SetLocalTunnels([]NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32"), tunnelA("n2", 2, "10.1.2.1/32", "10.1.20.0/24")})
	runNetwork(t, p)
	foreign := func() []NetworkTunnel { got, _ := p.f.m.ForeignTunnels(); return got[tdA] }
	waitFor(t, "A's tunnels at B", func() bool { return len(foreign()) == 2 })
	_, ch := p.f.m.ForeignTunnels()
	// A evicts n2: its tunnel leaves A's list, the open long-poll carries it.
	p.mA.SetLocalTunnels([]NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")})
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatal("ForeignTunnels' channel not closed on a change")
	}
	waitFor(t, "the eviction at B", func() bool { return len(foreign()) == 1 })
	if !strings.Contains(strings.Join(p.f.aud.ops(), " "), "federation.network:ok") {
		t.Fatalf("not audited: %v", p.f.aud.ops())
	}
	// Restarted: kept behind the barrier.
	m2, err := Open(context.Background(), Options{Store: p.f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(p.f.aud.append)})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := m2.ForeignTunnels(); len(got[tdA]) != 1 {
		t.Fatalf("after a restart: %+v", got)
	}
	// Removing the relationship removes its tunnels and wakes the watchers.
	_, ch = p.f.m.ForeignTunnels()
	if err := p.f.m.Remove(context.Background(), tdA); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("removing the relationship did not wake the watchers")
	}
	if len(foreign()) != 0 {
		t.Fatalf("after remove: %+v", foreign())
	}
}

// A relationship without network shares nothing: A refuses B's poll, and
// B neither follows A nor accepts tunnels of A.
func TestNetworkNotSharedSharesNothing(t *testing.T) {
	p := newNetworkPair(t, false, true)
	p.mA.SetLocalTunnels([]NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")})
	// B asks A's endpoint directly with its server SVID.
	e, _ := p.f.m.get(tdA)
	tc := tlsconfig.MTLSClientConfig(svidFunc(serverSVID(t, p.b)), e.bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(tdA, "/ward/server")))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(p.f.url, "/") + NetworkPath + "?wait=0s")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || bytes.Contains(body, []byte("10.1.1.1")) || resp.Header.Get(networkHeader) != "" {
		t.Fatalf("A served %s %q to a peer it does not share the network with", resp.Status, body)
	}
	if r, _ := p.refused.Load().(string); r != "network_not_shared" {
		t.Fatalf("refusal counted as %q", r)
	}
	// B's side without network: a list of A is refused, even well-formed.
	q := newNetworkPair(t, true, false)
	body, _ = json.Marshal(NetworkList{TrustDomain: "a.example", Sequence: 1, Tunnels: []NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")}})
	if err := q.f.m.AcceptNetwork(context.Background(), tdA, body); err == nil {
		t.Fatal("accepted tunnels over a relationship without network")
	}
	if got, _ := q.f.m.ForeignTunnels(); len(got) != 0 {
		t.Fatalf("foreign tunnels: %+v", got)
	}
	// And turning network off on a relationship that had tunnels hides them.
	r := newNetworkPair(t, true, true)
	body, _ = json.Marshal(NetworkList{TrustDomain: "a.example", Sequence: 1, Tunnels: []NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")}})
	if err := r.f.m.AcceptNetwork(context.Background(), tdA, body); err != nil {
		t.Fatal(err)
	}
	rel := r.f.rel(r.f.url)
	ent, _ := r.f.m.get(tdA)
	if _, err := r.f.m.write(context.Background(), ent.rec, ent.rev, ent.bundle, rel); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.f.m.ForeignTunnels(); len(got) != 0 {
		t.Fatalf("network turned off, foreign tunnels still: %+v", got)
	}
}

// The attacks a federated peer can run on the channel: each refused and
// audited, nothing installed.
func TestNetworkRefusesWhatIsNotThePeers(t *testing.T) {
	p := newNetworkPair(t, true, true)
	ctx := context.Background()
	good := tunnelA("n1", 1, "10.1.1.1/32")
	accept := func(l NetworkList) error {
		b, _ := json.Marshal(l)
		return p.f.m.AcceptNetwork(ctx, tdA, b)
	}
	list := func(ts ...NetworkTunnel) NetworkList {
		return NetworkList{TrustDomain: "a.example", Sequence: 5, Tunnels: ts}
	}
	other := good
	other.AgentID = "spiffe://b.example/ward/agent/victim"
	many := make([]NetworkTunnel, MaxNetworkTunnels+1)
	for i := range many {
		many[i] = tunnelA(fmt.Sprint("n", i), 1, "10.1.1.1/32")
	}
	zero := good
	zero.PublicKey = make([]byte, 32)
	everything := tunnelA("n1", 1, "0.0.0.0/0")
	ownEndpoint := tunnelA("n1", 1, "192.0.2.0/24")
	for name, l := range map[string]NetworkList{
		"another trust domain's list":      {TrustDomain: "b.example", Sequence: 5, Tunnels: []NetworkTunnel{good}},
		"a tunnel of B's own agent":        list(other),
		"too many tunnels":                 list(many...),
		"an all-zero key":                  list(zero),
		"a route for everything":           list(everything),
		"a prefix over its endpoint":       list(ownEndpoint),
		"a key claimed twice":              list(good, tunnelA("n2", 1, "10.1.2.1/32")),
		"a prefix claimed twice":           list(good, tunnelA("n2", 2, "10.1.0.0/16")),
		"an agent listed twice":            list(good, good),
		"a bad endpoint":                   list(NetworkTunnel{AgentID: good.AgentID, PublicKey: good.PublicKey, Endpoint: "a.example:1", AllowedIPs: good.AllowedIPs}),
		"no prefixes":                      list(NetworkTunnel{AgentID: good.AgentID, PublicKey: good.PublicKey, Endpoint: good.Endpoint}),
		"a prefix that does not parse":     list(tunnelA("n1", 1, "10.1.1.1/33")),
		"a public prefix (internet hosts)": list(good, tunnelA("n2", 2, "10.1.2.1/32", "8.8.8.0/24")),
		"a trust domain's prefix is ok":    {},
	} {
		if name == "a trust domain's prefix is ok" {
			continue
		}
		if err := accept(l); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := p.f.m.AcceptNetwork(ctx, tdA, bytes.Repeat([]byte(" "), MaxNetworkUpdate+1)); err == nil {
		t.Error("an oversized list: accepted")
	}
	if err := p.f.m.AcceptNetwork(ctx, tdA, []byte(`{"trust_domain":"a.example","sequence":1,"tunnels":[],"extra":1}`)); err == nil {
		t.Error("an unknown field: accepted")
	}
	if got, _ := p.f.m.ForeignTunnels(); len(got) != 0 {
		t.Fatalf("installed: %+v", got)
	}
	if n := strings.Count(strings.Join(p.f.aud.ops(), " "), "federation.network:denied"); n < 12 {
		t.Fatalf("refusals audited %d times: %v", n, p.f.aud.ops())
	}
	// Sequence never backwards, nor the same with other content.
	if err := accept(list(good)); err != nil {
		t.Fatal(err)
	}
	older := list(good)
	older.Sequence = 4
	if err := accept(older); err == nil {
		t.Error("an older sequence: accepted")
	}
	same := list(tunnelA("n1", 1, "10.1.9.9/32"))
	if err := accept(same); err == nil {
		t.Error("the same sequence with other content: accepted")
	}
	if got, _ := p.f.m.ForeignTunnels(); len(got[tdA]) != 1 || got[tdA][0].AllowedIPs[0] != "10.1.1.1/32" {
		t.Fatalf("installed: %+v", got)
	}
}

// FuzzAcceptNetwork feeds untrusted tunnel lists through the checks: no
// panic, and whatever is accepted is the peer's own, bounded and
// well-formed.
func FuzzAcceptNetwork(f *testing.F) {
	good, _ := json.Marshal(NetworkList{TrustDomain: "a.example", Sequence: 3, Tunnels: []NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")}})
	f.Add(good)
	f.Add([]byte(`{"trust_domain":"a.example","sequence":1,"tunnels":[{"agent_id":"spiffe://a.example/x","public_key":"AQ==","endpoint":"[::1]:1","allowed_ips":["::/1"]}]}`))
	f.Add([]byte(`{"tunnels":null}`))
	m, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdB, Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })})
	if err != nil {
		f.Fatal(err)
	}
	m.entries[tdA] = &entry{rel: Relationship{TrustDomain: tdA, Profile: ProfileSPIFFE, Network: true}}
	f.Fuzz(func(t *testing.T, data []byte) {
		m.net.remote = map[spiffeid.TrustDomain]receivedNetwork{}
		if err := m.AcceptNetwork(context.Background(), tdA, data); err != nil {
			return
		}
		got, _ := m.ForeignTunnels()
		for _, tu := range got[tdA] {
			id, err := spiffeid.FromString(tu.AgentID)
			if err != nil || !id.MemberOf(tdA) || len(tu.PublicKey) != 32 || len(tu.AllowedIPs) == 0 || len(tu.AllowedIPs) > MaxNetworkPrefixes {
				t.Fatalf("accepted %+v", tu)
			}
		}
	})
}

// TestNetworkPublicPrefixNeedsOptIn: a federated peer's tunnel claiming
// public address space would have this cluster's nodes route traffic for
// those internet hosts to it: refused, naming the prefix and
// network.allow_public_overlay_cidrs, unless that setting (OwnNetwork's
// AllowPublic) covers it.
func TestNetworkPublicPrefixNeedsOptIn(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("a.example")
	for _, c := range []struct {
		prefix, allow string
		ok            bool
	}{
		{"10.1.1.1/32", "", true},
		{"100.64.3.0/24", "", true},
		{"fd00:1::/64", "", true},
		{"8.8.8.0/24", "", false},
		{"2001:4860::/32", "", false},
		{"172.32.0.0/16", "", false},
		{"203.0.113.0/25", "203.0.113.0/24", true},
		{"203.0.112.0/23", "203.0.113.0/24", false},
	} {
		own := OwnNetwork{Overlay: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}}
		if c.allow != "" {
			own.AllowPublic = []netip.Prefix{netip.MustParsePrefix(c.allow)}
		}
		tu := tunnelA("n1", 1, c.prefix)
		err := checkNetworkTunnel(td, &tu, nil, own)
		if c.ok != (err == nil) {
			t.Errorf("%s (allowed %q): %v, want ok=%v", c.prefix, c.allow, err, c.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), c.prefix) || !strings.Contains(err.Error(), "network.allow_public_overlay_cidrs")) {
			t.Errorf("%s: the error names neither the prefix nor the setting: %v", c.prefix, err)
		}
	}
}
