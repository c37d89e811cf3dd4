package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// The attack: a federated peer advertises node endpoints inside this
// cluster's own ranges (its overlay, its nodes' underlay) or outside the
// relationship's network_endpoint_cidrs, to aim this cluster's nodes'
// WireGuard traffic there. Its list is refused, audited and logged, and
// nothing is installed; a stored list outside today's bounds is not
// relayed.
func TestNetworkRefusesEndpointsInOwnRanges(t *testing.T) {
	var logs bytes.Buffer
	aud := &auditLog{}
	own := OwnNetwork{Overlay: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}, Endpoints: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	m, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdB, Audit: audit.RecorderFunc(aud.append),
		Log: slog.New(slog.NewTextHandler(&logs, nil)), OwnNetwork: own})
	if err != nil {
		t.Fatal(err)
	}
	setRel := func(bound ...string) {
		m.mu.Lock()
		m.entries[tdA] = &entry{rel: Relationship{TrustDomain: tdA, Profile: ProfileSPIFFE, Network: true, NetworkEndpoints: bound}}
		m.mu.Unlock()
	}
	var seq uint64 = 10
	accept := func(ep string) error {
		seq++
		tu := tunnelA("n1", 1, "10.1.1.1/32")
		tu.Endpoint = ep
		b, _ := json.Marshal(NetworkList{TrustDomain: "a.example", Sequence: seq, Tunnels: []NetworkTunnel{tu}})
		return m.AcceptNetwork(context.Background(), tdA, b)
	}
	installed := func() string {
		got, _ := m.ForeignTunnels()
		if len(got[tdA]) != 1 {
			return ""
		}
		return got[tdA][0].Endpoint
	}

	setRel()
	for ep, why := range map[string]string{
		"10.250.3.3:51820": "overlay 10.250.0.0/16",
		"192.0.2.7:51820":  "own endpoint range 192.0.2.0/24",
		"127.0.0.1:51820":  "not a unicast address",
		"0.0.0.0:51820":    "not a unicast address",
		"[ff02::1]:51820":  "not a unicast address",
	} {
		err := accept(ep)
		if err == nil || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), ep) {
			t.Errorf("endpoint %s: %v, want a refusal naming %q", ep, err, why)
		}
		if installed() != "" {
			t.Fatalf("endpoint %s installed", ep)
		}
	}
	if n := strings.Count(strings.Join(aud.ops(), " "), "federation.network:denied"); n != 5 {
		t.Fatalf("refusals audited %d times: %v", n, aud.ops())
	}
	if !strings.Contains(logs.String(), "refused the tunnels of a federated authority") || !strings.Contains(logs.String(), "10.250.3.3:51820") {
		t.Fatalf("no log line naming the refused endpoint:\n%s", logs.String())
	}
	// Outside this cluster's ranges, with no bound on the relationship: taken.
	if err := accept("198.51.100.1:51820"); err != nil || installed() != "198.51.100.1:51820" {
		t.Fatalf("a peer's endpoint outside our ranges: %v, installed %q", err, installed())
	}

	// With network_endpoint_cidrs: only there (a shared underlay may be
	// named), never in the overlay.
	setRel("203.0.113.0/24", "192.0.2.128/25", "10.0.0.0/8")
	if err := accept("198.51.100.2:51820"); err == nil || !strings.Contains(err.Error(), "network_endpoint_cidrs") {
		t.Fatalf("outside the relationship's bound: %v", err)
	}
	if err := accept("10.250.9.9:51820"); err == nil || !strings.Contains(err.Error(), "overlay") {
		t.Fatalf("in the overlay, though the bound covers it: %v", err)
	}
	if err := accept("192.0.2.200:51820"); err != nil {
		t.Fatalf("in the shared underlay the bound names: %v", err)
	}
	if err := accept("203.0.113.9:51820"); err != nil || installed() != "203.0.113.9:51820" {
		t.Fatalf("in the bound: %v, installed %q", err, installed())
	}

	// The bound narrowed afterwards (or this cluster's ranges grew): the
	// stored list is no longer relayed.
	setRel("198.51.100.0/24")
	if installed() != "" {
		t.Fatal("a stored endpoint outside today's bound is still relayed")
	}
}

func TestParseNetworkEndpoints(t *testing.T) {
	for _, bad := range [][]string{{"0.0.0.0/0"}, {"::/0"}, {"198.51.100.1"}, {"x"}} {
		if _, err := ParseNetworkEndpoints(bad); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	if p, err := ParseNetworkEndpoints([]string{"198.51.100.7/24", "2001:db8::/32"}); err != nil || p[0].String() != "198.51.100.0/24" {
		t.Fatalf("%v %v", p, err)
	}
	r := Relationship{TrustDomain: tdA, EndpointURL: "https://a.invalid/", Profile: ProfileSPIFFE, Source: SourceAPI,
		EndpointID: spiffeid.RequireFromPath(tdA, "/ward/server"), NetworkEndpoints: []string{"198.51.100.0/24"}}
	if err := r.Validate(tdB); err == nil || !strings.Contains(err.Error(), "network") {
		t.Fatalf("network_endpoint_cidrs without network: %v", err)
	}
	r.Network = true
	if err := r.Validate(tdB); err != nil {
		t.Fatal(err)
	}
	r.NetworkEndpoints = []string{"0.0.0.0/0"}
	if err := r.Validate(tdB); err == nil {
		t.Fatal("network_endpoint_cidrs covering everything: valid")
	}
}
