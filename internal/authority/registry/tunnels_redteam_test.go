package registry

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

type auditLog struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (l *auditLog) Record(_ context.Context, e audit.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
	return nil
}

func (l *auditLog) find(op, result string) []audit.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Event
	for _, e := range l.evs {
		if e.Operation == op && e.Result == result {
			out = append(out, e)
		}
	}
	return out
}

func redteamRegistry(t testing.TB, st store.Store, now *atomic.Pointer[time.Time], overlay ...string) (*Registry, *auditLog) {
	l := &auditLog{}
	o := Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Audit: l}
	if now != nil {
		o.Clock = func() time.Time { return *now.Load() }
	}
	for _, s := range overlay {
		o.OverlayCIDRs = append(o.OverlayCIDRs, netip.MustParsePrefix(s))
	}
	if len(overlay) == 0 {
		o.OverlayCIDRs = everywhere
	}
	r, err := New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return r, l
}

func liveAgent(t testing.TB, r *Registry, name string, expires time.Time) spiffeid.ID {
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/" + name)
	if _, err := r.RecordAttestation(context.Background(), id, AttestJoinToken, nil, "aa", expires); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestTunnelOverlayCIDRs (red team): with network.overlay_cidrs set, a
// current agent cannot pre-claim a prefix outside the overlay, such as a
// DNS server's /32, nor a prefix wider than the overlay range.
func TestTunnelOverlayCIDRs(t *testing.T) {
	ctx := context.Background()
	r, _ := redteamRegistry(t, memstore.New(), nil, "10.250.0.0/16", "fd00:77::/48")
	a := liveAgent(t, r, "a", time.Now().Add(time.Hour))
	for _, bad := range [][]string{{"8.8.8.8/32"}, {"10.250.1.1/32", "10.53.0.53/32"}, {"10.250.0.0/15"}, {"fd00:78::1/128"}} {
		_, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.1:51820", AllowedIPs: bad})
		if errs.KindOf(err) != errs.Denied || !strings.Contains(err.Error(), "overlay") {
			t.Fatalf("claiming %v outside the overlay: %v", bad, err)
		}
	}
	if _, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.250.1.1/32", "10.250.1.0/24", "fd00:77::1/128"}}); err != nil {
		t.Fatalf("inside the overlay: %v", err)
	}
}

// TestTunnelNetworkOffWithoutOverlay (red team): without
// network.overlay_cidrs the WireGuard network is off, so a current agent
// cannot pre-claim any prefix (a DNS server's /32 on a node without strict
// mode); the refusal is audited and names the setting to add.
func TestTunnelNetworkOffWithoutOverlay(t *testing.T) {
	ctx := context.Background()
	l := &auditLog{}
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	a := liveAgent(t, r, "a", time.Now().Add(time.Hour))
	_, err = r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.53.0.53/32"}})
	if errs.KindOf(err) != errs.Precondition || !strings.Contains(err.Error(), "network.overlay_cidrs") {
		t.Fatalf("a claim with the network off: %v, want refused naming network.overlay_cidrs", err)
	}
	if ts, _ := r.Tunnels(ctx, true); len(ts) != 0 || r.InOverlay("10.53.0.53/32") {
		t.Fatalf("network off: %d tunnels stored, InOverlay %v", len(ts), r.InOverlay("10.53.0.53/32"))
	}
	if len(l.find("tunnel.register", audit.ResultError)) == 0 && len(l.find("tunnel.register", audit.ResultDenied)) == 0 {
		t.Fatal("the refused registration was not audited")
	}
}

// TestTunnelEndpointCIDRs (red team): with network.endpoint_cidrs, an
// agent cannot name an endpoint outside them (another host's address, for
// every peer to send its handshakes: reflection).
func TestTunnelEndpointCIDRs(t *testing.T) {
	ctx := context.Background()
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Audit: &auditLog{},
		OverlayCIDRs: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}, EndpointCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	a := liveAgent(t, r, "a", time.Now().Add(time.Hour))
	for _, ep := range []string{"198.51.100.7:51820", "10.0.0.53:53", "[2001:db8::1]:51820", "[::ffff:198.51.100.7]:51820"} {
		_, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: ep, AllowedIPs: []string{"10.250.1.1/32"}})
		if errs.KindOf(err) != errs.Denied || !strings.Contains(err.Error(), "network.endpoint_cidrs") {
			t.Fatalf("endpoint %s outside endpoint_cidrs: %v", ep, err)
		}
	}
	if _, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.9:51820", AllowedIPs: []string{"10.250.1.1/32"}}); err != nil {
		t.Fatalf("an endpoint inside: %v", err)
	}
}

// barrierStore holds the first n listings of the tunnels until all n
// are in progress: n registrations are then checked against the same
// tunnels, the race an attacker needs.
type barrierStore struct {
	store.Store
	mu      sync.Mutex
	n       int
	release chan struct{}
}

func (b *barrierStore) List(ctx context.Context, prefix string) ([]store.KV, error) {
	kvs, err := b.Store.List(ctx, prefix)
	if prefix != tunnelPrefix {
		return kvs, err
	}
	b.mu.Lock()
	wait := b.n > 0
	if wait {
		b.n--
		if b.n == 0 {
			close(b.release)
		}
	}
	b.mu.Unlock()
	if wait {
		<-b.release
	}
	return kvs, err
}

// TestTunnelRegistrationIsAtomic (red team): registrations checked at the
// same time against the same tunnels cannot all land: of n agents
// claiming overlapping prefixes at once, exactly one holds it.
func TestTunnelRegistrationIsAtomic(t *testing.T) {
	ctx := context.Background()
	const n = 4
	bs := &barrierStore{Store: memstore.New(), n: n, release: make(chan struct{})}
	r, _ := redteamRegistry(t, bs, nil)
	var ids []spiffeid.ID
	for i := range n {
		ids = append(ids, liveAgent(t, r, fmt.Sprintf("race%d", i), time.Now().Add(time.Hour)))
	}
	var wg sync.WaitGroup
	var won atomic.Int32
	errc := make(chan error, n)
	for i, id := range ids {
		wg.Go(func() {
			_, err := r.RegisterTunnel(ctx, id, Tunnel{PublicKey: pubKey(t), Endpoint: fmt.Sprintf("192.0.2.%d:51820", i+1), AllowedIPs: []string{fmt.Sprintf("10.250.0.%d/32", i+1), "10.250.9.0/24"}})
			if err == nil {
				won.Add(1)
			} else if errs.KindOf(err) != errs.Denied {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Errorf("a losing registration: %v (want Denied: the prefix is taken)", err)
	}
	ts, err := r.Tunnels(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if won.Load() != 1 || len(ts) != 1 {
		t.Fatalf("%d registrations of 10.250.9.0/24 landed (%d stored): want exactly one", won.Load(), len(ts))
	}
}

// TestEvictionDeletesTunnel (red team): an evicted agent's tunnel record
// is deleted, audited.
func TestEvictionDeletesTunnel(t *testing.T) {
	ctx := context.Background()
	r, l := redteamRegistry(t, memstore.New(), nil)
	a := liveAgent(t, r, "a", time.Now().Add(time.Hour))
	if _, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.250.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.EvictAgent(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	if ts, err := r.Tunnels(ctx, true); err != nil || len(ts) != 0 {
		t.Fatalf("after eviction the stored tunnels are %v (%v): want none", ts, err)
	}
	if evs := l.find("tunnel.delete", audit.ResultOK); len(evs) != 1 || evs[0].Fields["agent_id"] != a.String() || evs[0].Fields["reason"] != "agent evicted" {
		t.Fatalf("tunnel.delete events %+v", evs)
	}
}

// TestExpiredAgentTunnelIsReplaced (red team): when an agent's SVID has
// expired and another agent takes its prefix, the old record is deleted
// with the new one's write, audited.
func TestExpiredAgentTunnelIsReplaced(t *testing.T) {
	ctx := context.Background()
	var now atomic.Pointer[time.Time]
	t0 := time.Now()
	now.Store(&t0)
	r, l := redteamRegistry(t, memstore.New(), &now)
	a := liveAgent(t, r, "a", t0.Add(time.Minute))
	key := pubKey(t)
	if _, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: key, Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.250.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	t1 := t0.Add(2 * time.Minute)
	now.Store(&t1)
	b := liveAgent(t, r, "b", t1.Add(time.Hour))
	if _, err := r.RegisterTunnel(ctx, b, Tunnel{PublicKey: key, Endpoint: "192.0.2.1:51820", AllowedIPs: []string{"10.250.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	ts, err := r.Tunnels(ctx, true)
	if err != nil || len(ts) != 1 || ts[0].AgentID != b.String() {
		t.Fatalf("stored tunnels %v (%v): want only b's", ts, err)
	}
	if evs := l.find("tunnel.delete", audit.ResultOK); len(evs) != 1 || evs[0].Fields["agent_id"] != a.String() {
		t.Fatalf("tunnel.delete events %+v", evs)
	}
}

// TestTunnelBoundsEdgeForms (red team): the forms of a claim or an
// endpoint that could slip past the overlay and endpoint bounds: an
// IPv4-mapped IPv6 prefix of an overlay range (a different family, never
// inside an IPv4 overlay), a wide prefix written with a host address
// inside the overlay (10.250.1.5/8 is 10.0.0.0/8), a prefix one bit wider
// than an IPv6 overlay, an endpoint with a zone, an IPv4-mapped endpoint
// outside the range. An IPv4-mapped endpoint of an allowed address is the
// same host and is taken.
func TestTunnelBoundsEdgeForms(t *testing.T) {
	ctx := context.Background()
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Audit: &auditLog{},
		OverlayCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16"), netip.MustParsePrefix("fd00:77::/48")},
		EndpointCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	a := liveAgent(t, r, "a", time.Now().Add(time.Hour))
	for _, bad := range []string{"::ffff:10.250.1.0/120", "10.250.1.5/8", "10.250.0.0/15", "fd00:77::/47", "fd00::/8", "0.0.0.0/1", "::/1"} {
		_, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "192.0.2.1:51820", AllowedIPs: []string{bad}})
		if errs.KindOf(err) != errs.Denied && errs.KindOf(err) != errs.Invalid {
			t.Fatalf("claiming %s: %v, want refused", bad, err)
		}
	}
	for _, ep := range []string{"[fe80::1%eth0]:51820", "[::ffff:198.51.100.7]:51820", "[::ffff:c633:6407]:51820"} {
		_, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: ep, AllowedIPs: []string{"10.250.1.1/32"}})
		if err == nil {
			t.Fatalf("endpoint %s taken", ep)
		}
	}
	if _, err := r.RegisterTunnel(ctx, a, Tunnel{PublicKey: pubKey(t), Endpoint: "[::ffff:192.0.2.9]:51820", AllowedIPs: []string{"10.250.1.1/32"}}); err != nil {
		t.Fatalf("the IPv4-mapped form of an endpoint inside: %v", err)
	}
}
