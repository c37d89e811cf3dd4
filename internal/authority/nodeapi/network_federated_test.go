package nodeapi

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/wardproject/ward/internal/authority/registry"
)

func fedTunnel(id string, key byte, ep string, prefixes ...string) registry.Tunnel {
	return registry.Tunnel{AgentID: id, PublicKey: bytes.Repeat([]byte{key}, 32), Endpoint: ep, AllowedIPs: prefixes}
}

// A federated cluster cannot take this cluster's routes or keys, nor
// another federated cluster's, nor the underlay: mergePeers drops what
// would (the attack: a peer authority relaying tunnels that claim them).
func TestMergePeersForeignCannotHijack(t *testing.T) {
	local := []registry.Tunnel{
		fedTunnel("spiffe://a.example/ward/agent/n1", 1, "192.0.2.1:51820", "10.1.1.1/32", "10.1.10.0/24"),
		fedTunnel("spiffe://a.example/ward/agent/n2", 2, "192.0.2.2:51820", "10.1.2.1/32"),
	}
	foreign := map[string][]registry.Tunnel{
		"b.example": {
			// Legitimate.
			fedTunnel("spiffe://b.example/ward/agent/m1", 11, "198.51.100.1:51820", "10.2.1.1/32"),
			// A local node's /32, a wider prefix over a local subnet, a
			// local endpoint, the authority's address.
			fedTunnel("spiffe://b.example/ward/agent/m2", 12, "198.51.100.2:51820", "10.1.1.1/32", "10.1.0.0/16", "192.0.2.0/24", "203.0.113.5/32", "10.2.2.1/32"),
			// A local node's key.
			fedTunnel("spiffe://b.example/ward/agent/m3", 1, "198.51.100.3:51820", "10.2.3.1/32"),
			// Overlapping another federated trust domain's prefix.
			fedTunnel("spiffe://b.example/ward/agent/m4", 14, "198.51.100.4:51820", "10.3.0.0/16"),
		},
		"c.example": {fedTunnel("spiffe://c.example/ward/agent/x1", 21, "198.51.100.21:51820", "10.3.1.1/32")},
		// Not asked for by this agent.
		"d.example": {fedTunnel("spiffe://d.example/ward/agent/y1", 31, "198.51.100.31:51820", "10.4.1.1/32")},
	}
	asked := map[string]bool{"b.example": true, "c.example": true}
	pl := mergePeers("a.example", local, foreign, asked, []netip.Addr{netip.MustParseAddr("203.0.113.5")}, nil, nil)
	got := map[string][]string{}
	tds := map[string]string{}
	for _, p := range pl.Peers {
		got[p.AgentId] = p.AllowedIps
		tds[p.AgentId] = p.TrustDomain
	}
	want := map[string][]string{
		"spiffe://a.example/ward/agent/n1": {"10.1.1.1/32", "10.1.10.0/24"},
		"spiffe://a.example/ward/agent/n2": {"10.1.2.1/32"},
		"spiffe://b.example/ward/agent/m1": {"10.2.1.1/32"},
		"spiffe://b.example/ward/agent/m2": {"10.2.2.1/32"},
		"spiffe://b.example/ward/agent/m4": nil,
		"spiffe://c.example/ward/agent/x1": nil,
	}
	if len(got) != len(want) {
		t.Fatalf("peers: %v", got)
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok || !slices.Equal(g, w) {
			t.Errorf("%s: allowed IPs %v, want %v", id, g, w)
		}
	}
	if tds["spiffe://b.example/ward/agent/m1"] != "b.example" || tds["spiffe://a.example/ward/agent/n1"] != "a.example" {
		t.Errorf("trust domains: %v", tds)
	}
	// Nothing asked: only the local list.
	if pl := mergePeers("a.example", local, foreign, nil, nil, nil, nil); len(pl.Peers) != 2 {
		t.Fatalf("no federated asked: %d peers", len(pl.Peers))
	}
	// With overlay ranges, a foreign prefix outside them (a DNS server's
	// address, say) is not relayed, as a local agent could not claim it.
	overlay := netip.MustParsePrefix("10.0.0.0/8")
	in := func(s string) bool {
		p, err := netip.ParsePrefix(s)
		return err == nil && overlay.Bits() <= p.Bits() && overlay.Contains(p.Addr())
	}
	foreign["b.example"] = append(foreign["b.example"], fedTunnel("spiffe://b.example/ward/agent/m5", 15, "198.51.100.5:51820", "10.2.5.1/32", "8.8.8.8/32"))
	pl = mergePeers("a.example", local, foreign, map[string]bool{"b.example": true}, nil, in, nil)
	for _, p := range pl.Peers {
		if p.AgentId == "spiffe://b.example/ward/agent/m5" && !slices.Equal(p.AllowedIps, []string{"10.2.5.1/32"}) {
			t.Fatalf("outside the overlay relayed: %v", p.AllowedIps)
		}
	}
}

// A federated cluster cannot aim this cluster's nodes at their own
// underlay: a foreign tunnel whose endpoint is a local node's endpoint
// address or the authority's (as the agent reached it) is not relayed.
func TestMergePeersForeignEndpointOnLocalUnderlay(t *testing.T) {
	local := []registry.Tunnel{fedTunnel("spiffe://a.example/ward/agent/n1", 1, "192.0.2.1:51820", "10.1.1.1/32")}
	foreign := map[string][]registry.Tunnel{"b.example": {
		fedTunnel("spiffe://b.example/ward/agent/m1", 11, "198.51.100.1:51820", "10.2.1.1/32"),
		fedTunnel("spiffe://b.example/ward/agent/m2", 12, "192.0.2.1:51999", "10.2.2.1/32"),   // a local node's address
		fedTunnel("spiffe://b.example/ward/agent/m3", 13, "203.0.113.5:51820", "10.2.3.1/32"), // the authority's
		fedTunnel("spiffe://b.example/ward/agent/m4", 14, "not-an-endpoint", "10.2.4.1/32"),
	}}
	pl := mergePeers("a.example", local, foreign, map[string]bool{"b.example": true}, []netip.Addr{netip.MustParseAddr("203.0.113.5")}, nil, nil)
	var ids []string
	for _, p := range pl.Peers {
		ids = append(ids, p.AgentId)
	}
	if want := []string{"spiffe://a.example/ward/agent/n1", "spiffe://b.example/ward/agent/m1"}; !slices.Equal(ids, want) {
		t.Fatalf("relayed %v, want %v", ids, want)
	}
}
