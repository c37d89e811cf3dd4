package federation

// The network channel (docs/network.md, "Federated clusters"): this trust
// domain's WireGuard tunnels (each current node's public keys, endpoint
// and prefixes: only what a peer needs to reach it) are served at
// NetworkPath to the federated authorities whose relationship has
// Network set, and the tunnels of those peers are followed like the
// revocations and the catalog (longpoll.go). What is received is checked
// (the publisher's own agents only, bounded size, well-formed keys,
// endpoints and prefixes, no key or prefix claimed twice, sequence never
// backwards), audited, stored behind the barrier and handed to the Node
// API (ForeignTunnels), which merges it into the peer lists of the agents
// that name the trust domain in network.federated, after dropping what
// overlaps this cluster's own prefixes or underlay addresses.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/netrange"
)

const (
	// NetworkPath is where the https_spiffe bundle endpoint serves this
	// trust domain's WireGuard tunnels to federated authorities (mTLS,
	// relationships with network enabled only).
	NetworkPath = "/ward/federation/v1/network"
	// MaxNetworkUpdate bounds one tunnel list (bytes of JSON),
	// MaxNetworkTunnels its tunnels and MaxNetworkPrefixes one tunnel's
	// prefixes.
	MaxNetworkUpdate   = 1 << 20
	MaxNetworkTunnels  = 2048
	MaxNetworkPrefixes = 64

	networkRemotePrefix = "federation-network/"
	networkHeader       = "Ward-Network"
)

// NetworkTunnel is one node's tunnel as it crosses trust domains.
type NetworkTunnel struct {
	AgentID    string   `json:"agent_id"`
	PublicKey  []byte   `json:"public_key"`
	NextKey    []byte   `json:"next_public_key,omitempty"`
	Endpoint   string   `json:"endpoint"`
	AllowedIPs []string `json:"allowed_ips"`
}

// NetworkList is one trust domain's tunnels at a sequence.
type NetworkList struct {
	TrustDomain string          `json:"trust_domain"`
	Sequence    uint64          `json:"sequence"`
	Tunnels     []NetworkTunnel `json:"tunnels"`
}

type receivedNetwork struct {
	NetworkList
	ReceivedAt time.Time `json:"received_at"`
}

// netState is the Manager's tunnel memory (Manager.net).
type netState struct {
	mu      sync.Mutex
	local   NetworkList
	changed chan struct{} // closed and replaced when local changes
	remote  map[spiffeid.TrustDomain]receivedNetwork
	errs    map[spiffeid.TrustDomain]string
	// foreign is closed and replaced when what ForeignTunnels returns may
	// have changed (a list accepted or forgotten, a relationship changed).
	foreign chan struct{}
	// shared lists the trust domains sharing the network at the last
	// loadNetwork.
	shared string
	// drops are the relay drops reported since the last change
	// (relaydrops.go).
	drops relayDrops
}

func newNetState() *netState {
	return &netState{changed: make(chan struct{}), foreign: make(chan struct{}),
		remote: map[spiffeid.TrustDomain]receivedNetwork{}, errs: map[spiffeid.TrustDomain]string{}}
}

func networkRemoteKey(td spiffeid.TrustDomain) string { return networkRemotePrefix + td.Name() }

func (m *Manager) netChanged() {
	m.net.mu.Lock()
	close(m.net.foreign)
	m.net.foreign = make(chan struct{})
	m.net.resetDropsLocked()
	m.net.mu.Unlock()
}

// loadNetwork reads the stored received tunnel lists (Reload).
func (m *Manager) loadNetwork(ctx context.Context) error {
	kvs, err := m.opts.Store.List(ctx, networkRemotePrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing received tunnels: %v", ErrUnavailable, err)
	}
	n := m.net
	n.mu.Lock()
	changed := false
	for _, kv := range kvs {
		var r receivedNetwork
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.opts.Log.Error("skipping a stored tunnel list", "key", kv.Key, "err", err)
			continue
		}
		td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
		if err != nil || networkRemoteKey(td) != kv.Key {
			m.opts.Log.Error("skipping a stored tunnel list", "key", kv.Key, "trust_domain", r.TrustDomain)
			continue
		}
		if old, ok := n.remote[td]; ok && old.Sequence >= r.Sequence {
			continue
		}
		n.remote[td], changed = r, true
	}
	n.mu.Unlock()
	if changed {
		m.netChanged()
	}
	return nil
}

// checkNetShared wakes the ForeignTunnels watchers when the set of
// relationships sharing the network changed (a Reload picked up what
// another authority changed).
func (m *Manager) checkNetShared() {
	m.mu.Lock()
	var shared []string
	known := map[spiffeid.TrustDomain]bool{}
	for td, e := range m.entries {
		known[td] = true
		if e.rel.Network {
			shared = append(shared, td.Name())
		}
	}
	m.mu.Unlock()
	slices.Sort(shared)
	now := strings.Join(shared, ",")
	m.net.mu.Lock()
	changed := now != m.net.shared
	m.net.shared = now
	for td := range m.net.remote {
		if !known[td] { // removed by another authority: a new relationship starts over
			delete(m.net.remote, td)
			changed = true
		}
	}
	m.net.mu.Unlock()
	if changed {
		m.netChanged()
	}
}

// SetLocalTunnels publishes this trust domain's current tunnels (the
// registry's, as WatchTunnels delivers them) to the federated peers. The
// sequence is the publisher's clock in nanoseconds at the change (never
// below the last one + 1), so it keeps growing across restarts.
func (m *Manager) SetLocalTunnels(ts []NetworkTunnel) {
	n := m.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.local.Sequence != 0 && sameTunnels(n.local.Tunnels, ts) {
		return
	}
	seq := max(uint64(m.opts.Clock().UnixNano()), n.local.Sequence+1)
	n.local = NetworkList{TrustDomain: m.opts.TrustDomain.Name(), Sequence: seq, Tunnels: slices.Clone(ts)}
	close(n.changed)
	n.changed = make(chan struct{})
}

func sameTunnels(a, b []NetworkTunnel) bool {
	return slices.EqualFunc(a, b, func(x, y NetworkTunnel) bool {
		return x.AgentID == y.AgentID && bytes.Equal(x.PublicKey, y.PublicKey) && bytes.Equal(x.NextKey, y.NextKey) &&
			x.Endpoint == y.Endpoint && slices.Equal(x.AllowedIPs, y.AllowedIPs)
	})
}

// WaitNetwork returns this trust domain's tunnel list once its sequence is
// above after, or the current one when ctx ends first. Nothing is served
// before SetLocalTunnels was called (sequence 0: an empty list).
func (m *Manager) WaitNetwork(ctx context.Context, after uint64) (NetworkList, error) {
	for {
		m.net.mu.Lock()
		local, ch := m.net.local, m.net.changed
		m.net.mu.Unlock()
		if local.Sequence > after || ctx.Err() != nil {
			local.TrustDomain = m.opts.TrustDomain.Name()
			if local.Tunnels == nil {
				local.Tunnels = []NetworkTunnel{}
			}
			return local, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

// NetworkShared says whether the relationship with td shares tunnels.
func (m *Manager) NetworkShared(td spiffeid.TrustDomain) bool {
	e, ok := m.get(td)
	return ok && e.rel.Network
}

// ForeignTunnels returns the last tunnels received from every trust
// domain whose relationship (still) has network enabled, and a channel
// closed when that may change.
func (m *Manager) ForeignTunnels() (map[spiffeid.TrustDomain][]NetworkTunnel, <-chan struct{}) {
	m.mu.Lock()
	shared := map[spiffeid.TrustDomain]bool{}
	bounds := map[spiffeid.TrustDomain][]netip.Prefix{}
	for td, e := range m.entries {
		shared[td] = e.rel.Network
		bounds[td], _ = ParseNetworkEndpoints(e.rel.NetworkEndpoints) // validated when added
	}
	m.mu.Unlock()
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	out := map[spiffeid.TrustDomain][]NetworkTunnel{}
	for td, r := range m.net.remote {
		if !shared[td] {
			continue
		}
		// A list stored under other bounds (the server's network ranges
		// changed since) is relayed only where today's bounds allow.
		ts := make([]NetworkTunnel, 0, len(r.Tunnels))
		for _, t := range r.Tunnels {
			ep, err := netip.ParseAddrPort(t.Endpoint)
			if err != nil {
				m.reportDropLocked(td.Name(), t.AgentID, "tunnel", DropEndpointInvalid, "endpoint "+t.Endpoint+" is not ip:port")
				continue
			}
			if why := checkNetworkEndpoint(ep, bounds[td], m.opts.OwnNetwork); why != "" {
				m.reportDropLocked(td.Name(), t.AgentID, "tunnel", DropEndpointBounds, "endpoint "+t.Endpoint+" "+why)
				continue
			}
			ts = append(ts, t)
		}
		out[td] = ts
	}
	return out, m.net.foreign
}

// NetworkStatus is the state of the network channel with one trust domain.
type NetworkStatus struct {
	Sequence   uint64
	Has        bool
	ReceivedAt time.Time
	Tunnels    int
	LastError  string
}

// RemoteNetwork returns the network channel's state with td.
func (m *Manager) RemoteNetwork(td spiffeid.TrustDomain) NetworkStatus {
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	r, ok := m.net.remote[td]
	return NetworkStatus{Sequence: r.Sequence, Has: ok, ReceivedAt: r.ReceivedAt, Tunnels: len(r.Tunnels), LastError: m.net.errs[td]}
}

func (m *Manager) setNetErr(td spiffeid.TrustDomain, e string) {
	setChannelErr(&m.net.mu, m.net.errs, td, e)
}

// forgetNetwork drops the tunnels td sent (its relationship was removed):
// the Node API's watchers remove them from every agent at once.
func (m *Manager) forgetNetwork(ctx context.Context, td spiffeid.TrustDomain) error {
	if err := m.opts.Store.Delete(ctx, networkRemoteKey(td)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return errs.Errorf(errs.Unavailable, "%w: deleting the received tunnels: %v", ErrUnavailable, err)
	}
	m.net.mu.Lock()
	delete(m.net.remote, td)
	delete(m.net.errs, td)
	m.net.mu.Unlock()
	m.netChanged()
	return nil
}

// OwnNetwork is this cluster's own WireGuard ranges (Options.OwnNetwork):
// the server's network.overlay_cidrs and network.endpoint_cidrs.
type OwnNetwork struct {
	Overlay, Endpoints []netip.Prefix
	// AllowPublic is network.allow_public_overlay_cidrs: a peer's tunnel
	// prefix in public address space is refused unless inside it (this
	// cluster's nodes would route traffic for those internet hosts to the
	// peer; they refuse it too).
	AllowPublic []netip.Prefix
}

// MaxNetworkEndpoints bounds a relationship's network_endpoint_cidrs.
const MaxNetworkEndpoints = 64

// ParseNetworkEndpoints parses a relationship's network_endpoint_cidrs:
// CIDR prefixes, none covering everything.
func ParseNetworkEndpoints(cidrs []string) ([]netip.Prefix, error) {
	if len(cidrs) > MaxNetworkEndpoints {
		return nil, fmt.Errorf("network_endpoint_cidrs: %d entries, at most %d", len(cidrs), MaxNetworkEndpoints)
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("network_endpoint_cidrs: %q is not a CIDR prefix (e.g. 198.51.100.0/24)", c)
		}
		if p.Bits() == 0 {
			return nil, fmt.Errorf("network_endpoint_cidrs: %q allows every address: name the peer's node networks", c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// checkNetworkEndpoint says why a federated tunnel's endpoint ep may not
// be used by this cluster's nodes ("" when it may): one that is not a
// unicast address of another host (loopback, link-local, multicast,
// unspecified), one inside this cluster's overlay (its packets would be
// routed into the tunnels), and then either one outside the relationship's
// network_endpoint_cidrs (bound) or, when it has none, one inside this
// cluster's own endpoint ranges (a peer could otherwise aim this cluster's
// handshakes at its own nodes or hosts beside them).
func checkNetworkEndpoint(ep netip.AddrPort, bound []netip.Prefix, own OwnNetwork) string {
	a := ep.Addr().Unmap()
	if !a.IsGlobalUnicast() {
		return "is not a unicast address of another host (loopback, link-local, multicast or unspecified)"
	}
	for _, p := range own.Overlay {
		if p.Contains(a) {
			return "lies in this cluster's overlay " + p.String() + " (network.overlay_cidrs)"
		}
	}
	if len(bound) > 0 {
		for _, p := range bound {
			if p.Contains(a) {
				return ""
			}
		}
		return "lies outside the relationship's network_endpoint_cidrs"
	}
	for _, p := range own.Endpoints {
		if p.Contains(a) {
			return "lies in this cluster's own endpoint range " + p.String() + " (network.endpoint_cidrs); if the clusters share that underlay, name the peer's node networks in the relationship's network_endpoint_cidrs"
		}
	}
	return ""
}

// checkNetworkTunnel validates one received tunnel of trust domain td and
// normalizes its prefixes.
func checkNetworkTunnel(td spiffeid.TrustDomain, t *NetworkTunnel, bound []netip.Prefix, own OwnNetwork) error {
	id, err := spiffeid.FromString(t.AgentID)
	if err != nil {
		return fmt.Errorf("agent_id %q: %v", t.AgentID, err)
	}
	if !id.MemberOf(td) {
		return fmt.Errorf("tunnel of %s: not an agent of %s, which can only publish its own nodes", id, td.Name())
	}
	for _, k := range [][]byte{t.PublicKey, t.NextKey} {
		if k == nil && len(t.PublicKey) > 0 {
			continue
		}
		if len(k) != 32 || bytes.Equal(k, make([]byte, 32)) {
			return fmt.Errorf("tunnel of %s: a WireGuard public key is 32 bytes, not all zero", id)
		}
	}
	ep, err := netip.ParseAddrPort(t.Endpoint)
	if err != nil || ep.Port() == 0 {
		return fmt.Errorf("tunnel of %s: endpoint %q is not ip:port", id, t.Endpoint)
	}
	if why := checkNetworkEndpoint(ep, bound, own); why != "" {
		return fmt.Errorf("tunnel of %s: endpoint %s %s", id, t.Endpoint, why)
	}
	if len(t.AllowedIPs) == 0 || len(t.AllowedIPs) > MaxNetworkPrefixes {
		return fmt.Errorf("tunnel of %s: %d prefixes; 1 to %d", id, len(t.AllowedIPs), MaxNetworkPrefixes)
	}
	out := make([]string, 0, len(t.AllowedIPs))
	for _, s := range t.AllowedIPs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Bits() == 0 {
			return fmt.Errorf("tunnel of %s: %q is not a CIDR prefix narrower than everything", id, s)
		}
		if p.Contains(ep.Addr().Unmap()) {
			return fmt.Errorf("tunnel of %s: %s covers its own endpoint %s", id, p, t.Endpoint)
		}
		if err := netrange.CheckPrivate(p, own.AllowPublic); err != nil {
			return fmt.Errorf("tunnel of %s: %v", id, err)
		}
		out = append(out, p.Masked().String())
	}
	slices.Sort(out)
	t.AllowedIPs = slices.Compact(out)
	return nil
}

// AcceptNetwork checks a tunnel list received from td's authority,
// audits it (accepted or refused: one whose audit event cannot be written
// is not installed) and stores it (acceptDoc). Refused: no relationship
// with td or one without network, a list over MaxNetworkUpdate or
// MaxNetworkTunnels, one that does not parse, one for another trust
// domain or with a tunnel of another trust domain's agent, a bad key,
// endpoint or prefix, a key or a prefix claimed by two of its tunnels, a
// sequence older than the last accepted one, the same sequence with
// other content.
func (m *Manager) AcceptNetwork(ctx context.Context, td spiffeid.TrustDomain, body []byte) error {
	return acceptDoc(ctx, m, td, body, acceptSpec[NetworkList]{
		event: "federation.network", noun: "tunnels", own: "nodes", max: MaxNetworkUpdate, key: networkRemoteKey(td),
		refusedLog: "refused the tunnels of a federated authority", acceptedLog: "tunnels received from a federated authority",
		allowed: func() string {
			if !m.NetworkShared(td) {
				return "no federation relationship with " + td.Name() + " that shares the network"
			}
			return ""
		},
		prev: func() (NetworkList, bool) {
			m.net.mu.Lock()
			defer m.net.mu.Unlock()
			r, ok := m.net.remote[td]
			return r.NetworkList, ok
		},
		check: func(u *NetworkList, fields map[string]string) error {
			e, _ := m.get(td)
			bound, err := ParseNetworkEndpoints(e.rel.NetworkEndpoints)
			if err != nil {
				return err
			}
			return checkNetworkList(td, u, bound, m.opts.OwnNetwork, fields)
		},
		same:   func(a, b NetworkList) bool { return sameTunnels(a.Tunnels, b.Tunnels) },
		setErr: func(e string) { m.setNetErr(td, e) },
		stored: func(u NetworkList, at time.Time) (any, func()) {
			r := receivedNetwork{NetworkList: NetworkList{TrustDomain: td.Name(), Sequence: u.Sequence, Tunnels: u.Tunnels}, ReceivedAt: at}
			return r, keepIn(&m.net.mu, m.net.remote, td, r)
		},
		done: func(_ context.Context, u NetworkList, changed bool, _ map[string]string) []any {
			if changed {
				m.netChanged()
			}
			return []any{"tunnels", len(u.Tunnels)}
		},
	})
}

// checkNetworkList checks the tunnels of td's list u (each one, no agent,
// key or prefix twice), sorts them and adds the audit field.
func checkNetworkList(td spiffeid.TrustDomain, u *NetworkList, bound []netip.Prefix, own OwnNetwork, fields map[string]string) error {
	if len(u.Tunnels) > MaxNetworkTunnels {
		return fmt.Errorf("%d tunnels; at most %d", len(u.Tunnels), MaxNetworkTunnels)
	}
	keys, ids := map[string]string{}, map[string]bool{}
	var prefixes []netip.Prefix
	var owners []string
	for i := range u.Tunnels {
		t := &u.Tunnels[i]
		if err := checkNetworkTunnel(td, t, bound, own); err != nil {
			return err
		}
		if ids[t.AgentID] {
			return fmt.Errorf("two tunnels of %s", t.AgentID)
		}
		ids[t.AgentID] = true
		for _, k := range [][]byte{t.PublicKey, t.NextKey} {
			if len(k) == 0 {
				continue
			}
			if o, ok := keys[string(k)]; ok && o != t.AgentID {
				return fmt.Errorf("key %s is claimed by %s and %s", base64.StdEncoding.EncodeToString(k), o, t.AgentID)
			}
			keys[string(k)] = t.AgentID
		}
		for _, s := range t.AllowedIPs {
			p := netip.MustParsePrefix(s)
			for j, q := range prefixes {
				if owners[j] != t.AgentID && p.Overlaps(q) {
					return fmt.Errorf("%s of %s overlaps %s of %s", p, t.AgentID, q, owners[j])
				}
			}
			prefixes, owners = append(prefixes, p), append(owners, t.AgentID)
		}
	}
	slices.SortFunc(u.Tunnels, func(a, b NetworkTunnel) int { return strings.Compare(a.AgentID, b.AgentID) })
	names := make([]string, len(u.Tunnels))
	for i, t := range u.Tunnels {
		names[i] = t.AgentID + "=" + strings.Join(t.AllowedIPs, ",")
	}
	fields["tunnels"] = auditNames(names)
	return nil
}

// networkChannel is the network channel's long-poll (longpoll.go).
func (m *Manager) networkChannel() channel {
	return channel{name: "network channel", what: "tunnels", path: NetworkPath, header: networkHeader,
		max: MaxNetworkUpdate, accept: m.AcceptNetwork, setErr: m.setNetErr,
		after: func(td spiffeid.TrustDomain) (uint64, bool) {
			st := m.RemoteNetwork(td)
			return st.Sequence, st.Has
		},
		notWard: "serves no ward network channel (not a ward authority, or network is not enabled there for this trust domain)"}
}

// RunNetwork follows the tunnels of every federated trust domain whose
// relationship has network enabled (https_spiffe), until ctx ends.
func (m *Manager) RunNetwork(ctx context.Context, c RevocationClient) {
	m.runFollowers(ctx, c, func(r Relationship) bool { return r.Network }, func(ctx context.Context, rel Relationship, c RevocationClient) {
		m.follow(ctx, rel, c, m.networkChannel())
	})
}

// NetworkSource publishes this trust domain's tunnels to the peers that
// NetworkShared allows (the Manager).
type NetworkSource interface {
	WaitNetwork(ctx context.Context, after uint64) (NetworkList, error)
	NetworkShared(td spiffeid.TrustDomain) bool
}

// serveNetwork answers a federated authority's long-poll for this trust
// domain's tunnels: only a peer whose relationship has network enabled
// gets them (the others get 403 and nothing else).
func (e *Endpoint) serveNetwork(w http.ResponseWriter, r *http.Request) {
	id, ok := e.peer(w, r, "network channel", e.cfg.OnRevocationRefused)
	if !ok {
		return
	}
	shared := func() bool {
		if e.cfg.Network.NetworkShared(id.TrustDomain()) {
			return true
		}
		e.logRefused("network channel", "network_not_shared", r.RemoteAddr, "the relationship with "+id.TrustDomain().Name()+" does not share the network")
		if e.cfg.OnRevocationRefused != nil {
			e.cfg.OnRevocationRefused("network_not_shared")
		}
		http.Error(w, "this trust domain does not share its network with "+id.TrustDomain().Name()+" (federation relationship without network: true)", http.StatusForbidden)
		return false
	}
	if !shared() {
		return
	}
	if !e.peerSlot(w, r, id.TrustDomain(), "network channel", "network", maxLongPollsPerPeer, e.cfg.OnRevocationRefused) {
		return
	}
	defer e.slots.give(id.TrustDomain(), "network")
	var after uint64
	if a := r.URL.Query().Get("after"); a != "" {
		var err error
		if after, err = strconv.ParseUint(a, 10, 64); err != nil {
			http.Error(w, "after: not a sequence number", http.StatusBadRequest)
			return
		}
	}
	wait := MaxRevocationWait
	if ws := r.URL.Query().Get("wait"); ws != "" {
		if d, err := time.ParseDuration(ws); err == nil && d >= 0 && d < wait {
			wait = d
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	l, err := e.cfg.Network.WaitNetwork(ctx, after)
	if err != nil {
		http.Error(w, "network unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	// The relationship may have been removed or changed during the wait.
	if _, ok := e.peer(w, r, "network channel", e.cfg.OnRevocationRefused); !ok || !shared() {
		return
	}
	l.TrustDomain = e.cfg.CA.TrustDomain().Name()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(networkHeader, "1")
	_ = json.NewEncoder(w).Encode(l)
}
