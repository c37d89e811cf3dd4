package agent

import (
	"crypto/fips140"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/node/wgnet"
)

func TestParseNetworkConfig(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig + "network:\n  address: 10.250.1.1\n  subnets: [10.250.1.0/24]\n"))
	if fips140.Enabled() {
		// WireGuard's algorithms are not approved: refused in FIPS mode.
		if err == nil || !strings.Contains(err.Error(), "FIPS") {
			t.Fatalf("FIPS mode: got %v, want the network section refused", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	if n.Interface != "ward0" || n.ListenPort != 51820 || n.MTU != 1420 || time.Duration(n.RotationPeriod) != 24*time.Hour ||
		time.Duration(n.RotationOverlap) != 2*time.Second || len(n.own) != 2 || n.own[0].String() != "10.250.1.1/32" {
		t.Fatalf("defaults: %+v", n)
	}
	if c, err := ParseConfig([]byte(goodConfig + "network:\n  address: 10.250.1.1\n  federated: [b.example]\n")); err != nil || len(c.Network.Federated) != 1 {
		t.Fatalf("federated: %v", err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"network:\n  subnets: [10.250.1.0/24]\n", "address"},
		{"network:\n  address: node-1\n", "address"},
		{"network:\n  address: 10.250.1.1\n  subnets: [0.0.0.0/0]\n", "everything"},
		{"network:\n  address: 10.250.1.1\n  strict: true\n", "strict_cidrs"},
		{"network:\n  address: 10.250.1.1\n  strict_cidrs: [10.250.0.0/16]\n", "strict is false"},
		{"network:\n  address: 10.250.1.1\n  strict: true\n  strict_cidrs: [0.0.0.0/0]\n", "authority included"},
		{"network:\n  address: 10.250.1.1\n  rotation_period: 1s\n", "rotation_period"},
		{"network:\n  address: 10.250.1.1\n  rotation_period: 10s\n  rotation_overlap: 6s\n", "rotation_overlap"},
		{"network:\n  address: 10.250.1.1\n  endpoint: node-1:51820\n", "endpoint"},
		{"network:\n  address: 10.250.1.1\n  interface: a-very-long-interface-name\n", "15 bytes"},
		{"network:\n  address: 10.250.1.1\n  listen_port: 70000\n", "listen_port"},
		{"network:\n  address: 10.250.1.1\n  federated: [\"not a trust domain!\"]\n", "federated"},
	} {
		if _, err := ParseConfig([]byte(goodConfig + tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error naming %q", tc.yaml, err, tc.want)
		}
	}
}

// TestWireGuardKeySealed: the private key is kept only sealed under the
// cache key (never in clear on disk), survives a restart, and a damaged
// file is refused rather than silently replaced.
func TestWireGuardKeySealed(t *testing.T) {
	dir := t.TempDir()
	dc, err := openDiskCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cache: dc, now: time.Now}
	ks, err := a.loadWGKeys()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, wgKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, wgKeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	if strings.Contains(string(raw), string(ks.Current)) {
		t.Fatal("the private key is on disk in clear")
	}
	again, err := a.loadWGKeys()
	if err != nil || string(again.Current) != string(ks.Current) {
		t.Fatalf("reloaded %v, %v", again, err)
	}
	k, _ := wgnet.KeyFrom(ks.Current)
	if k.Public() == (wgnet.Key{}) || k.Public() == k {
		t.Fatal("public key derivation")
	}
	raw[len(raw)-1] ^= 1
	os.WriteFile(filepath.Join(dir, wgKeyFile), raw, 0o600)
	if _, err := a.loadWGKeys(); err == nil {
		t.Fatal("a damaged key file was accepted")
	}
}

// TestPeerPrefixesNotRouted runs a compromised peer's registration against
// this node (the authority's own checks aside): prefixes taking this
// node's own address, a peer's endpoint, the authority's address or, in
// strict mode, anything outside strict_cidrs are not routed; the peer's
// own overlay prefix still is.
func TestPeerPrefixesNotRouted(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig + "network:\n  address: 10.250.1.1\n  subnets: [10.250.1.0/24]\n  strict: true\n  strict_cidrs: [10.250.0.0/16]\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
	pfx := func(ss ...string) (out []netip.Prefix) {
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	honest := wgnet.Peer{ID: "honest", Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), AllowedIPs: pfx("10.250.3.1/32")}
	evil := wgnet.Peer{ID: "evil", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: pfx(
		"10.250.2.1/32",            // its own overlay address: routed
		"10.250.1.0/25",            // this node's subnet
		"192.0.2.3/32",             // the honest peer's endpoint
		"127.0.0.0/8",              // the authority (server_address 127.0.0.1)
		"0.0.0.0/1", "128.0.0.0/1", // everything
		"10.0.0.0/8",     // wider than the overlay
		"203.0.113.0/24", // outside the overlay
	)}
	got := a.routablePeers([]wgnet.Peer{honest, evil})
	if len(got) != 2 || !slices.Equal(got[0].AllowedIPs, honest.AllowedIPs) || !slices.Equal(got[1].AllowedIPs, pfx("10.250.2.1/32")) {
		t.Fatalf("routed %+v", got)
	}
	// Without strict mode the overlay is not declared: only the node's own
	// prefixes, the underlay addresses and (without this node's opt-in,
	// allow_public_overlay_cidrs) public address space are protected.
	c.Network.Strict, c.Network.strictCIDRs = false, nil
	got = a.routablePeers([]wgnet.Peer{honest, evil})
	if !slices.Equal(got[1].AllowedIPs, pfx("10.250.2.1/32")) {
		t.Fatalf("routed without strict, public space not allowed %+v", got[1].AllowedIPs)
	}
	c.Network.allowPublic = pfx("203.0.113.0/24")
	got = a.routablePeers([]wgnet.Peer{honest, evil})
	if !slices.Equal(got[1].AllowedIPs, pfx("10.250.2.1/32", "203.0.113.0/24")) {
		t.Fatalf("routed without strict %+v", got[1].AllowedIPs)
	}
}

// TestPeerPrefixClaimedTwiceNotRouted: two peers in the list claim
// overlapping prefixes (a node back after its SVID expired finds its
// subnet registered by another meanwhile): neither gets it, so no
// configuration order decides who receives the traffic.
func TestPeerPrefixClaimedTwiceNotRouted(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig + "network:\n  address: 10.250.1.1\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
	v := wgnet.Peer{ID: "victim", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.250.2.1/32"), netip.MustParsePrefix("10.250.2.0/24")}}
	x := wgnet.Peer{ID: "claimer", Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.250.3.1/32"), netip.MustParsePrefix("10.250.2.128/25")}}
	got := a.routablePeers([]wgnet.Peer{v, x})
	if !slices.Equal(got[0].AllowedIPs, []netip.Prefix{netip.MustParsePrefix("10.250.2.1/32")}) ||
		!slices.Equal(got[1].AllowedIPs, []netip.Prefix{netip.MustParsePrefix("10.250.3.1/32")}) {
		t.Fatalf("routed %v and %v", got[0].AllowedIPs, got[1].AllowedIPs)
	}
}

// TestPeerPrefixNotCoveringAuthorityByName: with server_address a name,
// the authority's address as the peer-list stream reached it is still
// never routed to a peer (behind a load balancer the authority cannot
// see that address to refuse it).
func TestPeerPrefixNotCoveringAuthorityByName(t *testing.T) {
	c, err := ParseConfig([]byte(strings.Replace(goodConfig, "127.0.0.1:8443", "ward.example.org:8443", 1) + "network:\n  address: 10.250.1.1\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
	a.net.authority = netip.MustParseAddr("198.51.100.7")
	evil := wgnet.Peer{ID: "evil", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.250.2.1/32"), netip.MustParsePrefix("198.51.100.0/24")}}
	got := a.routablePeers([]wgnet.Peer{evil})
	if !slices.Equal(got[0].AllowedIPs, []netip.Prefix{netip.MustParsePrefix("10.250.2.1/32")}) {
		t.Fatalf("routed %v", got[0].AllowedIPs)
	}
}

// TestPublicPeerPrefixesNotRouted: a peer list (from this cluster's
// authority, or a federated authority's tunnels it relays) that claims
// public address space for a peer, 8.8.8.0/24 say, would route this
// node's traffic for those internet hosts to that peer. The agent routes
// none of it unless its own allow_public_overlay_cidrs covers the prefix,
// strict mode or not, whatever the authority accepted; private and shared
// space is routed as before.
func TestPublicPeerPrefixesNotRouted(t *testing.T) {
	pfx := func(ss ...string) (out []netip.Prefix) {
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	peer := wgnet.Peer{ID: "spiffe://peer.example/ward/agent/n1", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: pfx(
		"10.250.2.1/32", "100.64.7.0/24", "fd00:77:2::/64", // private and shared: routed
		"8.8.8.0/24", "1.1.1.1/32", "172.32.0.0/16", "172.0.0.0/8", "2001:4860:4860::8888/128", // public: never
		"203.0.113.0/24", // public, routed only where the node allows it
	)}
	for _, c := range []struct {
		name, network string
		want          []netip.Prefix
	}{
		{"no opt-in", "network:\n  address: 10.250.1.1\n", pfx("10.250.2.1/32", "100.64.7.0/24", "fd00:77:2::/64")},
		{"strict, overlay covering it all", "network:\n  address: 10.250.1.1\n  strict: true\n  strict_cidrs: [10.0.0.0/8, 100.64.0.0/10]\n",
			pfx("10.250.2.1/32", "100.64.7.0/24")},
		{"opt-in of one public range", "network:\n  address: 10.250.1.1\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n",
			pfx("10.250.2.1/32", "100.64.7.0/24", "fd00:77:2::/64", "203.0.113.0/24")},
		{"opt-in of a narrower range", "network:\n  address: 10.250.1.1\n  allow_public_overlay_cidrs: [203.0.113.0/25]\n",
			pfx("10.250.2.1/32", "100.64.7.0/24", "fd00:77:2::/64")},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(goodConfig + c.network))
			if err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			a := &Agent{cfg: cfg, log: slog.New(slog.NewTextHandler(&logs, nil))}
			got := a.routablePeers([]wgnet.Peer{peer})
			if !slices.Equal(got[0].AllowedIPs, c.want) {
				t.Fatalf("routed %v, want %v", got[0].AllowedIPs, c.want)
			}
			if !strings.Contains(logs.String(), "prefix=8.8.8.0/24") || !strings.Contains(logs.String(), "public address space outside network.allow_public_overlay_cidrs") {
				t.Fatalf("the refusal is not logged with the prefix and the setting:\n%s", logs.String())
			}
		})
	}
}

// TestNetworkConfigPublicSpace: this node's own address, subnets and
// strict_cidrs must be private unless allow_public_overlay_cidrs covers
// them; the errors name the range and the setting.
func TestNetworkConfigPublicSpace(t *testing.T) {
	for _, c := range []struct {
		name, network, wantErr string
	}{
		{"private", "  address: 10.250.1.1\n  subnets: [10.251.0.0/24]\n  strict: true\n  strict_cidrs: [10.250.0.0/16]\n", ""},
		{"public address", "  address: 8.8.8.8\n", "address 8.8.8.8: 8.8.8.8/32 is public address space"},
		{"public subnet", "  address: 10.250.1.1\n  subnets: [8.8.8.0/24]\n", `subnets: "8.8.8.0/24": 8.8.8.0/24 is public`},
		{"public strict range", "  address: 10.250.1.1\n  strict: true\n  strict_cidrs: [10.250.0.0/16, 8.8.0.0/16]\n", `strict_cidrs: "8.8.0.0/16"`},
		{"public, opted in", "  address: 203.0.113.1\n  subnets: [203.0.113.64/26]\n  strict: true\n  strict_cidrs: [203.0.113.0/24]\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n", ""},
		{"opt-in not a prefix", "  address: 10.250.1.1\n  allow_public_overlay_cidrs: [8.8.8.8]\n", `allow_public_overlay_cidrs: "8.8.8.8" is not a CIDR prefix`},
		{"opt-in too wide", "  address: 10.250.1.1\n  allow_public_overlay_cidrs: [0.0.0.0/1]\n", `allow_public_overlay_cidrs: "0.0.0.0/1" refused`},
		{"opt-in of link-local", "  address: 10.250.1.1\n  allow_public_overlay_cidrs: [169.254.0.0/16]\n", "link-local"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(goodConfig + "network:\n" + c.network))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err %v, want %q", err, c.wantErr)
			}
			if strings.Contains(c.wantErr, "is public") && !strings.Contains(err.Error(), "network.allow_public_overlay_cidrs") {
				t.Fatalf("the error does not name the setting: %v", err)
			}
		})
	}
}

// TestNetworkDocAgentPublicOptIn: the agent.yaml example of docs/network.md
// ("Private address space only, unless you opt in") parses, and the agent
// it configures routes the allowed public range.
func TestNetworkDocAgentPublicOptIn(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "network.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "**Private address space only, unless you opt in.**")
	_, block, ok2 := strings.Cut(sec, "```yaml\n# agent.yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/network.md lacks the agent.yaml example of allow_public_overlay_cidrs")
	}
	c, err := ParseConfig([]byte(goodConfig + block))
	if err != nil {
		t.Fatalf("docs/network.md's agent example: %v", err)
	}
	a := &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
	want := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	got := a.routablePeers([]wgnet.Peer{{ID: "p", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: append(want, netip.MustParsePrefix("8.8.8.0/24"))}})
	if !slices.Equal(got[0].AllowedIPs, want) {
		t.Fatalf("routed %v, want %v", got[0].AllowedIPs, want)
	}
}
