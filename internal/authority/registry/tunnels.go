package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// tunnelPrefix holds one WireGuard registration per agent (docs/network.md),
// keyed like the agent records.
const tunnelPrefix = "network/tunnels/"

// Bounds on one registration.
const (
	MaxTunnelPrefixes = 64
	maxEndpoint       = 253 + 1 + 5
)

// Tunnel is a node's WireGuard registration, bound to the agent that made
// it: the key is the calling agent's ID, never a field of the request.
type Tunnel struct {
	AgentID    string    `json:"agent_id"`
	PublicKey  []byte    `json:"public_key"`
	NextKey    []byte    `json:"next_public_key,omitempty"`
	Endpoint   string    `json:"endpoint"`
	AllowedIPs []string  `json:"allowed_ips"`
	Updated    time.Time `json:"updated"`
}

func (r *Registry) tunnelKey(id spiffeid.ID) (string, error) {
	k, err := r.agentKey(id)
	if err != nil {
		return "", err
	}
	return tunnelPrefix + strings.TrimPrefix(k, agentPrefix), nil
}

// checkWGKey checks a Curve25519 public key: 32 bytes, not all zero.
func checkWGKey(field string, k []byte) error {
	if len(k) != 32 {
		return errs.Errorf(errs.Invalid, "%s is %d bytes; a WireGuard public key is 32", field, len(k))
	}
	if bytes.Equal(k, make([]byte, 32)) {
		return errs.Errorf(errs.Invalid, "%s is all zeros: not a public key", field)
	}
	return nil
}

// checkTunnel validates t's own fields and normalizes its prefixes.
func checkTunnel(t *Tunnel) error {
	if err := checkWGKey("public_key", t.PublicKey); err != nil {
		return err
	}
	if len(t.NextKey) > 0 {
		if err := checkWGKey("next_public_key", t.NextKey); err != nil {
			return err
		}
		if bytes.Equal(t.NextKey, t.PublicKey) {
			t.NextKey = nil
		}
	}
	if len(t.Endpoint) > maxEndpoint {
		return errs.Errorf(errs.Invalid, "endpoint is %d bytes; at most %d", len(t.Endpoint), maxEndpoint)
	}
	host, port, err := net.SplitHostPort(t.Endpoint)
	if err != nil {
		return errs.Errorf(errs.Invalid, "endpoint %q is not host:port: %v", t.Endpoint, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errs.Errorf(errs.Invalid, "endpoint %q: port must be 1-65535", t.Endpoint)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return errs.Errorf(errs.Invalid, "endpoint %q: the host must be an IP address (peers do not resolve names)", t.Endpoint)
	}
	if len(t.AllowedIPs) == 0 {
		return errs.Errorf(errs.Invalid, "allowed_ips is empty: name at least the node's overlay address (network.address)")
	}
	if len(t.AllowedIPs) > MaxTunnelPrefixes {
		return errs.Errorf(errs.Invalid, "allowed_ips has %d prefixes; at most %d", len(t.AllowedIPs), MaxTunnelPrefixes)
	}
	out := make([]string, 0, len(t.AllowedIPs))
	for _, s := range t.AllowedIPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return errs.Errorf(errs.Invalid, "allowed_ips: %q is not a CIDR prefix: %v", s, err)
		}
		if p.Bits() == 0 {
			return errs.Errorf(errs.Invalid, "allowed_ips: %s would route everything to one node; name the node's own subnets", s)
		}
		out = append(out, p.Masked().String())
	}
	slices.Sort(out)
	t.AllowedIPs = slices.Compact(out)
	return nil
}

func overlaps(a, b []string) string {
	for _, x := range a {
		px := netip.MustParsePrefix(x)
		for _, y := range b {
			if px.Overlaps(netip.MustParsePrefix(y)) {
				return x + " overlaps " + y
			}
		}
	}
	return ""
}

// covering returns the first of prefixes (normalized) that contains a,
// or "".
func covering(prefixes []string, a netip.Addr) string {
	a = a.Unmap()
	for _, s := range prefixes {
		if p := netip.MustParsePrefix(s); p.Contains(a) {
			return s
		}
	}
	return ""
}

// endpointAddr returns the IP of a stored endpoint (host:port), or the
// zero Addr.
func endpointAddr(ep string) netip.Addr {
	host, _, err := net.SplitHostPort(ep)
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// RegisterTunnel records agent id's WireGuard tunnel (the caller has
// authenticated id with its current SVID). It is refused when another
// node already holds one of its keys or a prefix overlapping its
// allowed IPs: a node cannot take over another's key or traffic. Nor may
// its allowed IPs cover an underlay address peers must reach in clear:
// its own endpoint, another node's endpoint, or an address in protect
// (the authority's, as the agent reached it): every peer routes a node's
// prefixes into its tunnel, so such a prefix would send the peers'
// WireGuard packets, or their Node API connections, to that node (a
// route hijack, or a loop that takes the overlay down). Audited.
func (r *Registry) RegisterTunnel(ctx context.Context, id spiffeid.ID, t Tunnel, protect ...netip.Addr) (Tunnel, error) {
	t.AgentID = id.String()
	fields := map[string]string{"agent_id": t.AgentID, "endpoint": t.Endpoint,
		"public_key": base64.StdEncoding.EncodeToString(t.PublicKey), "allowed_ips": strings.Join(t.AllowedIPs, ",")}
	if len(t.NextKey) > 0 {
		fields["next_public_key"] = base64.StdEncoding.EncodeToString(t.NextKey)
	}
	key, err := r.tunnelKey(id)
	if err != nil {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, err)
	}
	if len(r.opts.OverlayCIDRs) == 0 {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, errs.Errorf(errs.Precondition,
			"the WireGuard network is off on this authority: network.overlay_cidrs is not set; set it in the server config to the ranges the nodes' tunnel prefixes lie in, e.g. network: {overlay_cidrs: [10.250.0.0/16]} (docs/network.md)"))
	}
	if err := checkTunnel(&t); err != nil {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, err)
	}
	if err := r.inEndpoints(t.Endpoint); err != nil {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, err)
	}
	if p := covering(t.AllowedIPs, endpointAddr(t.Endpoint)); p != "" {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, errs.Errorf(errs.Invalid,
			"allowed_ips: %s covers this node's own endpoint %s: peers would send its WireGuard packets into the tunnel itself; name only overlay prefixes", p, t.Endpoint))
	}
	for _, a := range protect {
		if p := covering(t.AllowedIPs, a); a.IsValid() && p != "" {
			return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, errs.Errorf(errs.Denied,
				"allowed_ips: %s covers the authority's address %s: peers would send their Node API traffic to this node; name only overlay prefixes", p, a.Unmap()))
		}
	}
	if err := r.inOverlay(t.AllowedIPs); err != nil {
		return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, err)
	}
	// Check and write under the allocation record's revision: the write
	// is one batch conditional on it, so two registrations checked
	// against the same tunnels (on this authority or another sharing
	// the store) cannot both land; the loser checks again.
	started := false
	for attempt := 0; ; attempt++ {
		res, stale, err := r.checkTunnelAgainst(ctx, key, t)
		if err != nil {
			if errs.KindOf(err) == errs.Unavailable && !started {
				return Tunnel{}, err
			}
			return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, err)
		}
		if res.unchanged {
			if started {
				return res.old, r.auditEnd(ctx, "tunnel.register", fields, nil)
			}
			return res.old, nil // unchanged: no write, no event (agents re-register on every start)
		}
		if !started {
			if err := r.auditStart(ctx, "tunnel.register", fields); err != nil {
				return Tunnel{}, err
			}
			started = true
		}
		t.Updated = r.now()
		b, _ := json.Marshal(t)
		ops := []store.Op{{Key: key, Value: b, ExpectRevision: -1},
			{Key: tunnelAllocKey, Value: []byte(t.AgentID), ExpectRevision: res.allocRev}}
		for _, o := range stale {
			ops = append(ops, store.Op{Key: o.key, Delete: true, ExpectRevision: o.rev})
		}
		_, err = r.st.Batch(ctx, ops)
		if errors.Is(err, store.ErrConflict) && attempt < maxTunnelAttempts {
			continue
		}
		if err != nil {
			return Tunnel{}, r.auditEnd(ctx, "tunnel.register", fields, storeErr("storing the tunnel of "+t.AgentID, err))
		}
		for _, o := range stale {
			r.auditStaleTunnel(ctx, o.t, t.AgentID)
		}
		return t, r.auditEnd(ctx, "tunnel.register", fields, nil)
	}
}

// tunnelAllocKey is the record every tunnel registration writes,
// conditional on the revision it read before checking (outside
// tunnelPrefix: it is no tunnel).
const tunnelAllocKey = "network/tunnel-alloc"

// maxTunnelAttempts bounds the re-checks of a registration that keeps
// losing the race to others.
const maxTunnelAttempts = 16

type storedTunnel struct {
	key string
	rev int64
	t   Tunnel
}

type tunnelCheck struct {
	allocRev  int64
	unchanged bool
	old       Tunnel
}

// InOverlay says whether the tunnel prefix p (CIDR) is inside the
// configured overlay ranges (none configured: none is, the network is
// off): the Node API holds federated clusters' prefixes to the same bound.
func (r *Registry) InOverlay(p string) bool {
	if _, err := netip.ParsePrefix(p); err != nil || len(r.opts.OverlayCIDRs) == 0 {
		return false
	}
	return r.inOverlay([]string{p}) == nil
}

// inEndpoints refuses an endpoint outside Options.EndpointCIDRs.
func (r *Registry) inEndpoints(ep string) error {
	if len(r.opts.EndpointCIDRs) == 0 {
		return nil
	}
	a := endpointAddr(ep)
	for _, o := range r.opts.EndpointCIDRs {
		if a.IsValid() && o.Contains(a.Unmap()) {
			return nil
		}
	}
	return errs.Errorf(errs.Denied, "endpoint %s is outside the ranges WireGuard endpoints may be in (network.endpoint_cidrs: %v): peers would send their handshakes there; register an endpoint on the nodes' network, or widen endpoint_cidrs", ep, r.opts.EndpointCIDRs)
}

// inOverlay refuses a prefix outside the configured overlay ranges
// (Options.OverlayCIDRs).
func (r *Registry) inOverlay(prefixes []string) error {
	for _, s := range prefixes {
		p := netip.MustParsePrefix(s)
		ok := false
		for _, o := range r.opts.OverlayCIDRs {
			if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return errs.Errorf(errs.Denied, "allowed_ips: %s is outside the overlay ranges agents may claim (network.overlay_cidrs: %v)", s, r.opts.OverlayCIDRs)
		}
	}
	return nil
}

// checkTunnelAgainst checks t (agent key) against the stored tunnels,
// reading the allocation record's revision first. Against current agents
// only: the tunnel of an evicted agent, or of one whose SVID expired (a
// node that attested again under another agent ID, with the same key and
// subnets), holds nothing; such a tunnel that t conflicts with is
// returned as stale, to be deleted with t's write.
func (r *Registry) checkTunnelAgainst(ctx context.Context, key string, t Tunnel) (tunnelCheck, []storedTunnel, error) {
	var res tunnelCheck
	if kv, err := r.st.Get(ctx, tunnelAllocKey); err == nil {
		res.allocRev = kv.Revision
	} else if !errors.Is(err, store.ErrNotFound) {
		return res, nil, storeErr("reading the tunnel allocation", err)
	}
	kvs, err := r.st.List(ctx, tunnelPrefix)
	if err != nil {
		return res, nil, storeErr("listing tunnels", err)
	}
	live, err := r.liveAgents(ctx)
	if err != nil {
		return res, nil, err
	}
	var stale []storedTunnel
	for _, kv := range kvs {
		var o Tunnel
		if err := json.Unmarshal(kv.Value, &o); err != nil {
			return res, nil, errs.Errorf(errs.Internal, "stored tunnel %s is unreadable: %v", kv.Key, err)
		}
		if kv.Key == key {
			if sameTunnel(o, t) {
				res.unchanged, res.old = true, o
			}
			continue
		}
		if o.AgentID == t.AgentID {
			continue
		}
		why := tunnelConflict(t, o)
		if why == nil {
			continue
		}
		if !live[o.AgentID] {
			stale = append(stale, storedTunnel{key: kv.Key, rev: kv.Revision, t: o})
			continue
		}
		return res, nil, why
	}
	if res.unchanged && len(stale) > 0 {
		res.unchanged = false // write anyway: the stale records go
	}
	return res, stale, nil
}

// tunnelConflict says why t may not be registered while o is, or nil.
func tunnelConflict(t, o Tunnel) error {
	if oa := endpointAddr(o.Endpoint); oa.IsValid() {
		if p := covering(t.AllowedIPs, oa); p != "" {
			return errs.Errorf(errs.Denied,
				"allowed_ips: %s covers the endpoint %s of %s: peers would send its WireGuard packets to this node; name only overlay prefixes", p, o.Endpoint, o.AgentID)
		}
	}
	for _, k := range [][]byte{t.PublicKey, t.NextKey} {
		if len(k) > 0 && (bytes.Equal(k, o.PublicKey) || bytes.Equal(k, o.NextKey)) {
			return errs.Errorf(errs.Denied,
				"the WireGuard key %s is registered to %s: a node registers only its own key", base64.StdEncoding.EncodeToString(k), o.AgentID)
		}
	}
	if why := overlaps(t.AllowedIPs, o.AllowedIPs); why != "" {
		return errs.Errorf(errs.Denied,
			"allowed_ips: %s, which %s routes: give each node its own subnets (network.address, network.subnets)", why, o.AgentID)
	}
	return nil
}

// auditStaleTunnel records the deletion of a no longer current agent's
// tunnel that by's registration replaced.
func (r *Registry) auditStaleTunnel(ctx context.Context, o Tunnel, by string) {
	f := map[string]string{"agent_id": o.AgentID, "allowed_ips": strings.Join(o.AllowedIPs, ","), "endpoint": o.Endpoint,
		"reason": "agent no longer current; its key or prefixes were taken by " + by}
	_ = r.auditEnd(ctx, "tunnel.delete", f, nil)
}

// liveAgents returns the IDs of the current agents: not evicted, SVID
// not expired.
func (r *Registry) liveAgents(ctx context.Context) (map[string]bool, error) {
	agents, err := r.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	live := make(map[string]bool, len(agents))
	now := r.now()
	for _, a := range agents {
		if !a.Evicted && now.Before(a.Expires) {
			live[a.SPIFFEID] = true
		}
	}
	return live, nil
}

func sameTunnel(a, b Tunnel) bool {
	return bytes.Equal(a.PublicKey, b.PublicKey) && bytes.Equal(a.NextKey, b.NextKey) && a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// Tunnels returns the registered tunnels sorted by agent ID: those of
// current agents only (an evicted or unknown agent's tunnel is left out,
// and so is one whose agent SVID expired: it must attest again), or every
// stored one with all. (An expiry is no store write: watchers see it with
// the next change.)
func (r *Registry) Tunnels(ctx context.Context, all bool) ([]Tunnel, error) {
	kvs, err := r.st.List(ctx, tunnelPrefix)
	if err != nil {
		return nil, storeErr("listing tunnels", err)
	}
	var live map[string]bool
	if !all {
		if live, err = r.liveAgents(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]Tunnel, 0, len(kvs))
	for _, kv := range kvs {
		var t Tunnel
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			return nil, errs.Errorf(errs.Internal, "stored tunnel %s is unreadable: %v", kv.Key, err)
		}
		if all || live[t.AgentID] {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b Tunnel) int { return strings.Compare(a.AgentID, b.AgentID) })
	return out, nil
}

// WatchTunnels calls send with the current tunnels (of current agents), then
// again whenever they change (a registration, or an agent evicted or
// attested again), until ctx ends or send fails. Changes come from the
// store's watch, not a poll, and one watch (the registry's tunnel hub)
// serves every watcher: a change is listed once, however many agents
// follow it.
func (r *Registry) WatchTunnels(ctx context.Context, send func([]Tunnel) error) error {
	h := r.tunnelHub()
	h.subscribe(r)
	defer h.unsubscribe()
	var seen uint64
	for {
		cur, ver, changed := h.get()
		if ver != 0 && ver != seen {
			if err := send(cur); err != nil {
				return err
			}
			seen = ver
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// hub is the one loop that watches the store for WatchTunnels: it runs
// while anyone watches, keeps the current list and wakes the watchers
// when it changes.
type hub struct {
	mu      sync.Mutex
	cur     []Tunnel
	ver     uint64
	changed chan struct{}
	subs    int
	stop    context.CancelFunc
}

func (r *Registry) tunnelHub() *hub {
	r.hubOnce.Do(func() { r.hub = &hub{changed: make(chan struct{})} })
	return r.hub
}

func (h *hub) get() ([]Tunnel, uint64, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur, h.ver, h.changed
}

func (h *hub) subscribe(r *Registry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs++
	if h.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.stop = cancel
		go h.run(ctx, r)
	}
}

func (h *hub) unsubscribe() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs--
	if h.subs == 0 && h.stop != nil {
		h.stop()
		h.stop, h.cur, h.ver = nil, nil, 0
	}
}

func (h *hub) publish(ctx context.Context, ts []Tunnel) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ctx.Err() != nil || h.ver != 0 && reflect.DeepEqual(ts, h.cur) {
		return
	}
	h.cur, h.ver = ts, h.ver+1
	close(h.changed)
	h.changed = make(chan struct{})
}

// run watches until ctx ends, starting over (bounded backoff) when the
// store's watch ends or a listing fails: watchers keep the last list.
func (h *hub) run(ctx context.Context, r *Registry) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := h.watchOnce(ctx, r)
		if ctx.Err() != nil {
			return
		}
		slog.Warn("registry: watching tunnels failed; starting over", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (h *hub) watchOnce(ctx context.Context, r *Registry) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tw, err := r.st.Watch(ctx, tunnelPrefix)
	if err != nil {
		return storeErr("watching tunnels", err)
	}
	aw, err := r.st.Watch(ctx, agentPrefix)
	if err != nil {
		return storeErr("watching agents", err)
	}
	for {
		cur, err := r.Tunnels(ctx, false)
		if err != nil {
			return err
		}
		h.publish(ctx, cur)
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-tw:
			if !ok {
				return watchEnded(ctx)
			}
		case _, ok := <-aw:
			if !ok {
				return watchEnded(ctx)
			}
		}
	}
}

func watchEnded(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	return errs.Errorf(errs.Unavailable, "the store's watch ended: reconnect")
}

// DeleteTunnel removes agent id's tunnel (none is not an error).
func (r *Registry) DeleteTunnel(ctx context.Context, id spiffeid.ID) error {
	key, err := r.tunnelKey(id)
	if err != nil {
		return err
	}
	if err := r.st.Delete(ctx, key); err != nil {
		return storeErr("deleting the tunnel of "+id.String(), err)
	}
	return nil
}
