package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// The flood: a hostile peer publishes thousands of tunnels this cluster
// will not relay, again and again. Each drop is logged and audited the
// first time it is seen after a change, at most maxRelayDropsLogged of
// them (then one line saying more are only counted), every distinct one
// counted in ward_federation_network_relay_dropped_total; seeing the same
// drops again (every agent's stream merges the same lists) adds nothing;
// after a change they are reported once more.
func TestRelayDropsLoggedOncePerChangeAndBounded(t *testing.T) {
	logs := &syncbuf.Buffer{}
	aud := &auditLog{}
	m, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc(aud.append),
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	flood := func() {
		for range 3 { // three agents' streams merging the same lists
			for i := range 1000 {
				m.ReportRelayDrop(tdB.Name(), fmt.Sprintf("spiffe://b.example/ward/agent/n%d", i), "prefix 10.9.0.0/24", DropOverlapsLocal, "overlaps this cluster's 10.9.0.0/16")
			}
		}
	}
	lines := func() int { return strings.Count(logs.String(), "not relaying a federated tunnel") }
	audited := func() int {
		n := 0
		for _, op := range aud.ops() {
			if op == "federation.network_dropped:ok" {
				n++
			}
		}
		return n
	}
	waitAudited := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // a bound on the test, not a timing assertion
		for audited() < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := audited(); got != want {
			t.Fatalf("%d federation.network_dropped events, want %d", got, want)
		}
	}
	flood()
	if got := lines(); got != maxRelayDropsLogged {
		t.Fatalf("%d drop lines logged for 1000 drops seen 3 times, want %d", got, maxRelayDropsLogged)
	}
	if !strings.Contains(logs.String(), "counted in ward_federation_network_relay_dropped_total only") {
		t.Fatalf("no line saying further drops are only counted:\n%s", logs.String())
	}
	waitAudited(maxRelayDropsLogged)
	if got := m.relayDropCounts()[[2]string{tdB.Name(), DropOverlapsLocal}]; got != 1000 {
		t.Fatalf("counted %d drops, want 1000 (each once)", got)
	}
	flood()
	if got := lines(); got != maxRelayDropsLogged {
		t.Fatalf("the same drops again logged %d more lines", got-maxRelayDropsLogged)
	}
	m.netChanged() // a list accepted, a relationship changed
	flood()
	if got := lines(); got != 2*maxRelayDropsLogged {
		t.Fatalf("after a change %d lines in all, want %d (reported once more)", got, 2*maxRelayDropsLogged)
	}
	waitAudited(2 * maxRelayDropsLogged)
	if got := m.relayDropCounts()[[2]string{tdB.Name(), DropOverlapsLocal}]; got != 2000 {
		t.Fatalf("counted %d drops, want 2000", got)
	}
	// Past what one change remembers, nothing more is logged or counted.
	for i := range maxRelayDropsKept + 10 {
		m.ReportRelayDrop(tdB.Name(), fmt.Sprintf("spiffe://b.example/ward/agent/x%d", i), "tunnel", DropEndpointBounds, "outside")
	}
	if !strings.Contains(logs.String(), "more federated tunnels dropped since the last change than are remembered") {
		t.Fatal("no line about the drops past the bound")
	}
}

// network_endpoint_cidrs change in place (ward federation update, ward
// apply): audited federation.update with the previous value; a list the
// old bound refused is fetched again and accepted under a wider one; the
// tunnels accepted are relayed under a narrower one no more, and that
// drop is reported (counted in the metric). Anything else about an
// existing relationship still cannot change through Add, nor can a
// bootstrap bundle come with the change.
func TestNetworkEndpointsChangeInPlace(t *testing.T) {
	p := newNetworkPair(t, true, true)
	p.mA.SetLocalTunnels([]NetworkTunnel{tunnelA("n1", 1, "10.1.1.1/32")}) // endpoint 192.0.2.1:51820
	ctx := context.Background()
	rel := p.f.rel(p.f.url)
	rel.Network = true
	update := func(bound ...string) {
		t.Helper()
		r := rel
		r.NetworkEndpoints = bound
		st, err := p.f.m.Add(ctx, r, nil)
		if err != nil {
			t.Fatalf("changing network_endpoint_cidrs to %v: %v", bound, err)
		}
		if !slices.Equal(st.NetworkEndpoints, bound) {
			t.Fatalf("after the change: %v", st.NetworkEndpoints)
		}
	}
	update("203.0.113.0/24")
	runNetwork(t, p)
	foreign := func() []NetworkTunnel { got, _ := p.f.m.ForeignTunnels(); return got[tdA] }
	waitFor(t, "A's list refused under the bound", func() bool {
		return strings.Contains(strings.Join(p.f.aud.ops(), " "), "federation.network:denied")
	})
	if len(foreign()) != 0 {
		t.Fatalf("relayed outside the bound: %+v", foreign())
	}
	update("192.0.2.0/24")
	waitFor(t, "A's tunnels accepted under the wider bound", func() bool { return len(foreign()) == 1 })
	var upd []audit.Event
	p.f.aud.mu.Lock()
	evs := slices.Clone(p.f.aud.evs)
	p.f.aud.mu.Unlock()
	for _, ev := range evs {
		if ev.Operation == "federation.update" && ev.Result == audit.ResultOK {
			upd = append(upd, ev)
		}
	}
	if len(upd) != 2 || upd[1].Fields["network_endpoint_cidrs"] != "192.0.2.0/24" || upd[1].Fields["previous_network_endpoint_cidrs"] != "203.0.113.0/24" {
		t.Fatalf("federation.update events: %+v", upd)
	}
	// Narrowed: the tunnel accepted is no longer relayed, and the drop is
	// reported.
	update("198.51.100.0/24")
	if len(foreign()) != 0 {
		t.Fatal("a tunnel outside the narrowed bound is still relayed")
	}
	if got := p.f.m.relayDropCounts()[[2]string{tdA.Name(), DropEndpointBounds}]; got == 0 {
		t.Fatalf("the drop was not counted: %v", p.f.m.relayDropCounts())
	}
	// Not in place: another field, or a bootstrap bundle with it.
	other := rel
	other.AllowedGateways = []string{"198.51.100.9:443"}
	if _, err := p.f.m.Add(ctx, other, nil); err == nil {
		t.Fatal("allowed_gateways changed through Add")
	}
	if e, _ := p.f.m.get(tdA); len(e.rel.AllowedGateways) != 0 {
		t.Fatalf("allowed_gateways changed: %v", e.rel.AllowedGateways)
	}
	withBundle := rel
	withBundle.NetworkEndpoints = []string{"192.0.2.0/24"}
	if _, err := p.f.m.Add(ctx, withBundle, bundleOf(t, p.f.a)); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "ward federation update") {
		t.Fatalf("a change with a bootstrap bundle: %v, want ErrExists naming ward federation update", err)
	}
	bad := rel
	bad.NetworkEndpoints = []string{"0.0.0.0/0"}
	if _, err := p.f.m.Add(ctx, bad, nil); err == nil {
		t.Fatal("network_endpoint_cidrs of every address accepted in place")
	}
}
