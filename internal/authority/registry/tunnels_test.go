package registry

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// everywhere is an overlay covering every prefix narrower than /0: the
// tests of the other checks run with the network on and no overlay bound.
var everywhere = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1"),
	netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/1")}

func tunnelRegistry(t testing.TB) *Registry {
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }), OverlayCIDRs: everywhere})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pubKey(t testing.TB) []byte {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

// TestTunnelsLeaveOutEvictedAgents: the peer list is of current agents
// only, and the watch delivers the eviction.
func TestTunnelsLeaveOutEvictedAgents(t *testing.T) {
	ctx := context.Background()
	r := tunnelRegistry(t)
	var ids []spiffeid.ID
	for i := range 2 {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/ward/agent/n%d", i))
		ids = append(ids, id)
		if _, err := r.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.RegisterTunnel(ctx, id, Tunnel{PublicKey: pubKey(t), Endpoint: fmt.Sprintf("192.0.2.%d:51820", i+1), AllowedIPs: []string{fmt.Sprintf("10.250.%d.1/32", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	lists := make(chan []Tunnel, 4)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go r.WatchTunnels(wctx, func(ts []Tunnel) error { lists <- ts; return nil })
	if got := <-lists; len(got) != 2 {
		t.Fatalf("first list %v", got)
	}
	if _, _, err := r.EvictAgent(ctx, ids[1], nil); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lists:
		if len(got) != 1 || got[0].AgentID != ids[0].String() {
			t.Fatalf("after eviction %v", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the eviction never reached the watch")
	}
}

// FuzzCheckTunnel: what an agent sends (its key, endpoint, prefixes) is
// untrusted: checkTunnel never panics, and what it accepts is sound.
func FuzzCheckTunnel(f *testing.F) {
	f.Add(make([]byte, 32), []byte{}, "10.0.0.1:51820", "10.250.1.1/32", "10.250.1.0/24")
	f.Add([]byte("0123456789abcdef0123456789abcdef"), []byte("0123456789abcdef0123456789abcdeX"), "[::1]:1", "fd00::/64", "0.0.0.0/0")
	f.Add([]byte{1}, []byte{}, "host:99999", "10.0.0.0", "")
	f.Fuzz(func(t *testing.T, key, next []byte, endpoint, p1, p2 string) {
		tn := Tunnel{PublicKey: key, NextKey: next, Endpoint: endpoint, AllowedIPs: []string{p1, p2}}
		if checkTunnel(&tn) != nil {
			return
		}
		if len(tn.PublicKey) != 32 || len(tn.NextKey) != 0 && len(tn.NextKey) != 32 {
			t.Fatalf("accepted key lengths %d, %d", len(tn.PublicKey), len(tn.NextKey))
		}
		if _, _, err := net.SplitHostPort(tn.Endpoint); err != nil {
			t.Fatalf("accepted endpoint %q", tn.Endpoint)
		}
		for _, s := range tn.AllowedIPs {
			p, err := netip.ParsePrefix(s)
			if err != nil || p.Bits() == 0 || p != p.Masked() {
				t.Fatalf("accepted prefix %q", s)
			}
		}
		_ = overlaps(tn.AllowedIPs, tn.AllowedIPs)
	})
}

// BenchmarkRegisterTunnel: one registration among 1,000 nodes (the
// authority checks keys and prefixes against every other node).
func BenchmarkRegisterTunnel(b *testing.B) {
	ctx := context.Background()
	r := tunnelRegistry(b)
	for i := range 1000 {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/ward/agent/n%d", i))
		if _, err := r.RegisterTunnel(ctx, id, Tunnel{PublicKey: pubKey(b), Endpoint: "192.0.2.1:51820",
			AllowedIPs: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)}}); err != nil {
			b.Fatal(err)
		}
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/new")
	keys := [][]byte{pubKey(b), pubKey(b)}
	b.ResetTimer()
	for i := range b.N {
		if _, err := r.RegisterTunnel(ctx, id, Tunnel{PublicKey: keys[i%2], Endpoint: "192.0.2.9:51820", AllowedIPs: []string{"10.250.0.0/24"}}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStaleTunnelHoldsNothing: a node that attested again under a new
// agent ID (its old SVID expired) registers its same key and subnets; a
// current agent's are still refused to anyone else.
func TestStaleTunnelHoldsNothing(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }), Clock: func() time.Time { return now },
		OverlayCIDRs: everywhere})
	if err != nil {
		t.Fatal(err)
	}
	old := spiffeid.RequireFromString("spiffe://example.org/ward/agent/join_token/old")
	fresh := spiffeid.RequireFromString("spiffe://example.org/ward/agent/join_token/new")
	other := spiffeid.RequireFromString("spiffe://example.org/ward/agent/other")
	for _, id := range []spiffeid.ID{old, other} {
		if _, err := r.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	key := pubKey(t)
	tn := Tunnel{PublicKey: key, Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.250.1.0/24"}}
	if _, err := r.RegisterTunnel(ctx, old, tn); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RegisterTunnel(ctx, other, tn); err == nil {
		t.Fatal("another agent took a current agent's key and subnet")
	}
	now = now.Add(2 * time.Hour) // old's SVID expired
	if _, err := r.RecordAttestation(ctx, fresh, AttestJoinToken, nil, "bb", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RegisterTunnel(ctx, fresh, tn); err != nil {
		t.Fatalf("the node's new agent could not take over its own key: %v", err)
	}
	ts, err := r.Tunnels(ctx, false)
	if err != nil || len(ts) != 1 || ts[0].AgentID != fresh.String() {
		t.Fatalf("live tunnels %v, %v", ts, err)
	}
}
