package federation

import (
	"context"
	"maps"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Why a federated tunnel (or one of its prefixes) is not relayed to this
// cluster's agents: the reason label of
// ward_federation_network_relay_dropped_total.
const (
	DropEndpointBounds  = "endpoint_outside_bounds"      // outside network_endpoint_cidrs or in this cluster's ranges (today's bounds)
	DropEndpointInvalid = "endpoint_invalid"             // not ip:port
	DropEndpointLocal   = "endpoint_is_local_underlay"   // a local node's or the authority's address
	DropLocalKey        = "key_of_this_cluster"          // carries a local node's WireGuard key
	DropOutsideOverlay  = "prefix_outside_overlay"       // outside network.overlay_cidrs
	DropOverlapsLocal   = "prefix_overlaps_local"        // overlaps a local node's prefix
	DropCoversUnderlay  = "prefix_covers_underlay"       // covers a local node's or the authority's address
	DropOverlapsPeer    = "prefix_overlaps_another_peer" // overlaps another federated trust domain's prefix
)

// Bounds of what one change (a tunnel list accepted or forgotten, a
// relationship changed) can make this authority log and audit about
// dropped tunnels: a hostile peer publishing thousands of bad prefixes
// gets at most maxRelayDropsLogged lines and events, plus one line saying
// how many more there were; at most maxRelayDropsKept distinct drops are
// remembered (and counted) per change.
const (
	maxRelayDropsLogged = 16
	maxRelayDropsKept   = 4096
)

// relayDrops is what was reported since the last change (netState.drops).
type relayDrops struct {
	seen     map[string]bool
	logged   int
	overflow bool
	// counted is ward_federation_network_relay_dropped_total per trust
	// domain and reason (kept across changes).
	counted map[[2]string]uint64
}

// ReportRelayDrop reports a federated tunnel, or one of its prefixes
// (what), that is not relayed to this cluster's agents, and why: logged
// (warning) and audited (federation.network_dropped) the first time it is
// seen after each change of the relayed tunnels, counted in
// ward_federation_network_relay_dropped_total{trust_domain,reason}; so an
// operator sees why a peer's node is unreachable, and a peer cannot flood
// the log (see maxRelayDropsLogged). The Node API calls it for what it
// drops while merging peer lists.
func (m *Manager) ReportRelayDrop(td, agentID, what, reason, detail string) {
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	m.reportDropLocked(td, agentID, what, reason, detail)
}

func (m *Manager) reportDropLocked(td, agentID, what, reason, detail string) {
	d := &m.net.drops
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	if d.counted == nil {
		d.counted = map[[2]string]uint64{}
	}
	key := td + "\x00" + agentID + "\x00" + what + "\x00" + reason + "\x00" + detail
	if d.seen[key] {
		return
	}
	if len(d.seen) >= maxRelayDropsKept {
		if !d.overflow {
			d.overflow = true
			m.opts.Log.Warn("network: more federated tunnels dropped since the last change than are remembered; not all are logged or counted",
				"kept", maxRelayDropsKept)
		}
		return
	}
	d.seen[key] = true
	d.counted[[2]string{td, reason}]++
	d.logged++
	switch {
	case d.logged <= maxRelayDropsLogged:
		m.opts.Log.Warn("network: not relaying a federated tunnel's "+what+" to this cluster's nodes",
			"trust_domain", td, "agent_id", agentID, "reason", reason, "detail", detail)
		fields := map[string]string{"trust_domain": td, "agent_id": agentID, "what": what, "reason": reason, "detail": detail}
		go func() {
			ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "system:federation", RequestID: reqctx.NewRequestID()})
			if err := m.opts.Audit.Record(ctx, m.event(ctx, "federation.network_dropped", audit.ResultOK, fields)); err != nil {
				m.opts.Log.Warn("network: could not audit a dropped federated tunnel", "trust_domain", td, "err", err)
			}
		}()
	case d.logged == maxRelayDropsLogged+1:
		m.opts.Log.Warn("network: more federated tunnels or prefixes are not relayed; further ones since the last change are counted in ward_federation_network_relay_dropped_total only",
			"trust_domain", td, "logged", maxRelayDropsLogged)
	}
}

// resetDropsLocked starts a new change: drops still present are reported
// once more.
func (n *netState) resetDropsLocked() {
	n.drops.seen, n.drops.logged, n.drops.overflow = nil, 0, false
}

// relayDropCounts is ward_federation_network_relay_dropped_total.
func (m *Manager) relayDropCounts() map[[2]string]uint64 {
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	return maps.Clone(m.net.drops.counted)
}
