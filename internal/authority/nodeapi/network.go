package nodeapi

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/errs"
)

// nodeNetwork serves NodeNetwork (docs/network.md): agents register their
// node's WireGuard key, always under their own authenticated agent ID, and
// follow the peer list. authenticate lets only current agents in, and
// ctxStream ends a WatchPeers stream when its agent stops being current.
type nodeNetwork struct {
	wardv1.UnimplementedNodeNetworkServer
	s *Server

	mu      sync.Mutex
	buckets map[string]tunnelBucket // agent ID → its registration budget
}

// Registrations per agent: a burst, then one per tunnelRefill. An agent
// registers at start and twice per key rotation (rotation_period is at
// least 10 s); every accepted change is a store write, an audit event and
// a new peer list sent to every agent, so a compromised agent flipping
// its registration would otherwise make all of them work for it.
const (
	tunnelBurst      = 20
	tunnelRefill     = 2 * time.Second
	maxTunnelBuckets = 100000
)

type tunnelBucket struct {
	tokens float64
	at     time.Time
}

// admit spends one registration of agent at now, or says when the next
// may come.
func (n *nodeNetwork) admit(agent string, now time.Time) (time.Duration, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.buckets == nil {
		n.buckets = map[string]tunnelBucket{}
	}
	b, ok := n.buckets[agent]
	if !ok {
		if len(n.buckets) >= maxTunnelBuckets {
			for a, o := range n.buckets {
				if now.Sub(o.at) > tunnelBurst*tunnelRefill {
					delete(n.buckets, a) // full again: forgetting it changes nothing
				}
			}
		}
		b = tunnelBucket{tokens: tunnelBurst, at: now}
	}
	if el := now.Sub(b.at); el > 0 {
		b.tokens = min(tunnelBurst, b.tokens+float64(el)/float64(tunnelRefill))
	}
	b.at = now
	if b.tokens < 1 {
		n.buckets[agent] = b
		return time.Duration((1 - b.tokens) * float64(tunnelRefill)), false
	}
	b.tokens--
	n.buckets[agent] = b
	return 0, true
}

func tunnelProto(t registry.Tunnel, td string) *wardv1.Tunnel {
	return &wardv1.Tunnel{AgentId: t.AgentID, PublicKey: t.PublicKey, NextPublicKey: t.NextKey, Endpoint: t.Endpoint,
		AllowedIps: t.AllowedIPs, Updated: timestamppb.New(t.Updated), TrustDomain: td}
}

func (n *nodeNetwork) RegisterTunnel(ctx context.Context, r *wardv1.RegisterTunnelRequest) (*wardv1.Tunnel, error) {
	id := agentFrom(ctx)
	if id.IsZero() {
		return nil, status.Error(codes.Unauthenticated, "RegisterTunnel needs an agent SVID")
	}
	if wait, ok := n.admit(id.String(), n.s.cfg.Clock()); !ok {
		return nil, status.Errorf(codes.ResourceExhausted, "RegisterTunnel: %s registers too often (a burst of %d, then one per %s); the next in %s", id, tunnelBurst, tunnelRefill, wait.Round(time.Millisecond))
	}
	ep := r.Endpoint
	var host netip.Addr
	if p, _ := peer.FromContext(ctx); p != nil && p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			host = ap.Addr().Unmap()
		}
	}
	if ep != "" && !n.s.cfg.AdvertisedEndpoints {
		// Without network.advertised_endpoints the endpoint is where this
		// connection came from: an agent naming another host's address
		// would have every peer send that host its handshakes.
		h, _, err := net.SplitHostPort(ep)
		a, perr := netip.ParseAddr(h)
		if err == nil && perr == nil && a.Unmap() != host {
			return nil, status.Errorf(codes.PermissionDenied, "endpoint %s: its address is not the one this connection came from (%s); register listen_port instead, or have the authority allow advertised endpoints (network.advertised_endpoints, for nodes behind NAT)", ep, host)
		}
	}
	if ep == "" {
		if r.ListenPort == 0 || r.ListenPort > 65535 {
			return nil, status.Error(codes.InvalidArgument, "give endpoint (host:port) or listen_port (1-65535)")
		}
		if !host.IsValid() {
			return nil, status.Error(codes.InvalidArgument, "the caller's address is unknown: give endpoint (host:port)")
		}
		ep = net.JoinHostPort(host.String(), strconv.Itoa(int(r.ListenPort)))
	}
	// The authority's own address, as this agent reached it, is never a
	// node's to route (a prefix covering it would take every peer's Node
	// API connection into that node's tunnel).
	var protect []netip.Addr
	if p, _ := peer.FromContext(ctx); p != nil && p.LocalAddr != nil {
		if ap, err := netip.ParseAddrPort(p.LocalAddr.String()); err == nil {
			protect = append(protect, ap.Addr().Unmap())
		}
	}
	t, err := n.s.cfg.Registry.RegisterTunnel(ctx, id, registry.Tunnel{PublicKey: r.PublicKey, NextKey: r.NextPublicKey, Endpoint: ep, AllowedIPs: r.AllowedIps}, protect...)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return tunnelProto(t, n.s.td.Name()), nil
}

// maxFederatedAsked bounds network.federated in one WatchPeers request.
const maxFederatedAsked = 64

func (n *nodeNetwork) WatchPeers(r *wardv1.WatchPeersRequest, ss wardv1.NodeNetwork_WatchPeersServer) error {
	td := n.s.td.Name()
	if len(r.Federated) > maxFederatedAsked {
		return status.Errorf(codes.InvalidArgument, "federated names %d trust domains; at most %d", len(r.Federated), maxFederatedAsked)
	}
	asked := map[string]bool{}
	for _, f := range r.Federated {
		if f != td {
			asked[f] = true
		}
	}
	if len(asked) == 0 || n.s.cfg.ForeignTunnels == nil {
		return n.watchLocal(ss, func(ts []registry.Tunnel) error {
			pl := &wardv1.PeerList{Peers: make([]*wardv1.Tunnel, 0, len(ts))}
			for _, t := range ts {
				pl.Peers = append(pl.Peers, tunnelProto(t, td))
			}
			return ss.Send(pl)
		})
	}
	// The local list comes from the registry's watch, the foreign ones
	// from the federation channel: the loop below sends their merge
	// whenever either changes.
	var protect []netip.Addr
	if p, _ := peer.FromContext(ss.Context()); p != nil && p.LocalAddr != nil {
		if ap, err := netip.ParseAddrPort(p.LocalAddr.String()); err == nil {
			protect = append(protect, ap.Addr().Unmap())
		}
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	var mu sync.Mutex
	var local []registry.Tunnel
	haveLocal := false
	localChanged := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- n.watchLocal(ss, func(ts []registry.Tunnel) error {
			mu.Lock()
			local, haveLocal = ts, true
			mu.Unlock()
			select {
			case localChanged <- struct{}{}:
			default:
			}
			return nil
		})
		cancel()
	}()
	var last *wardv1.PeerList
	for {
		foreign, fch := n.s.cfg.ForeignTunnels()
		mu.Lock()
		cur, ok := local, haveLocal
		mu.Unlock()
		if ok {
			pl := mergePeers(td, cur, foreign, asked, protect, n.s.cfg.Registry.InOverlay, n.s.relayDrop())
			if last == nil || !proto.Equal(pl, last) {
				if err := ss.Send(pl); err != nil {
					return err
				}
				last = pl
			}
		}
		select {
		case <-ctx.Done():
			select {
			case err := <-errc:
				return err
			default:
				return nil
			}
		case <-localChanged:
		case <-fch:
		}
	}
}

// watchLocal runs the registry's tunnel watch for a WatchPeers stream.
func (n *nodeNetwork) watchLocal(ss wardv1.NodeNetwork_WatchPeersServer, send func([]registry.Tunnel) error) error {
	err := n.s.cfg.Registry.WatchTunnels(ss.Context(), send)
	if ss.Context().Err() != nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return errs.ToStatus(err)
}

// RelayDropFunc is told about each federated tunnel, or prefix of one
// (what), that WatchPeers does not relay, with the reason label
// (federation.Drop*) and the detail: Config.OnRelayDrop.
type RelayDropFunc func(td, agentID, what, reason, detail string)

// relayDrop is Config.OnRelayDrop, else a warning in the log.
func (s *Server) relayDrop() RelayDropFunc {
	if f := s.cfg.OnRelayDrop; f != nil {
		return f
	}
	return func(td, agentID, what, reason, detail string) {
		s.cfg.Log.Warn("network: not relaying a federated tunnel's "+what, "trust_domain", td, "agent_id", agentID, "reason", reason, "detail", detail)
	}
}

// mergePeers is the peer list of a WatchPeers stream that asked for the
// federated trust domains in asked: the local tunnels, then the foreign
// ones of those trust domains, each foreign prefix dropped (with a
// warning) when it overlaps a local prefix, covers a local node's
// endpoint or the authority's address (protect), or overlaps a prefix of
// another foreign trust domain (then neither gets it), or lies outside
// network.overlay_cidrs (inOverlay, the bound local agents have), and a foreign
// tunnel dropped when it carries a local key or its endpoint is a local
// node's endpoint address or the authority's (the federation manager
// already bounds foreign endpoints by the relationship's
// network_endpoint_cidrs and this cluster's own ranges): a federated cluster cannot
// take a route or a key of this one, nor of another federated cluster.
// The agent checks the list again (routablePeers).
func mergePeers(td string, local []registry.Tunnel, foreign map[string][]registry.Tunnel, asked map[string]bool, protect []netip.Addr, inOverlay func(string) bool, report RelayDropFunc) *wardv1.PeerList {
	pl := &wardv1.PeerList{Peers: make([]*wardv1.Tunnel, 0, len(local))}
	var localPrefixes []netip.Prefix
	keys := map[string]bool{}
	under := slices.Clone(protect)
	for _, t := range local {
		pl.Peers = append(pl.Peers, tunnelProto(t, td))
		for _, s := range t.AllowedIPs {
			if p, err := netip.ParsePrefix(s); err == nil {
				localPrefixes = append(localPrefixes, p)
			}
		}
		for _, k := range [][]byte{t.PublicKey, t.NextKey} {
			if len(k) > 0 {
				keys[string(k)] = true
			}
		}
		if ap, err := netip.ParseAddrPort(t.Endpoint); err == nil {
			under = append(under, ap.Addr().Unmap())
		}
	}
	tds := make([]string, 0, len(foreign))
	for f := range foreign {
		if asked[f] && f != td {
			tds = append(tds, f)
		}
	}
	slices.Sort(tds)
	type claim struct {
		p  netip.Prefix
		td string
	}
	var claims []claim
	for _, f := range tds {
		for _, t := range foreign[f] {
			for _, s := range t.AllowedIPs {
				if p, err := netip.ParsePrefix(s); err == nil {
					claims = append(claims, claim{p, f})
				}
			}
		}
	}
	drop := func(t registry.Tunnel, f, what, reason, why string) {
		if report != nil {
			report(f, t.AgentID, what, reason, why)
		}
	}
	for _, f := range tds {
	tunnels:
		for _, t := range foreign[f] {
			for _, k := range [][]byte{t.PublicKey, t.NextKey} {
				if len(k) > 0 && keys[string(k)] {
					drop(t, f, "tunnel", federation.DropLocalKey, "it carries a key of this cluster")
					continue tunnels
				}
			}
			// Its endpoint may not be where this cluster's own nodes or
			// authority are: the peer would aim every local node's
			// handshakes (and, for a node, its WireGuard socket) there.
			if ap, err := netip.ParseAddrPort(t.Endpoint); err != nil {
				drop(t, f, "tunnel", federation.DropEndpointInvalid, "its endpoint "+t.Endpoint+" is not ip:port")
				continue tunnels
			} else if slices.Contains(under, ap.Addr().Unmap()) {
				drop(t, f, "tunnel", federation.DropEndpointLocal, "its endpoint "+t.Endpoint+" is the underlay address of this cluster's node or authority")
				continue tunnels
			}
			var keep []string
			for _, s := range t.AllowedIPs {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					continue
				}
				why, reason := "", ""
				if inOverlay != nil && !inOverlay(s) {
					why, reason = "is outside this authority's network.overlay_cidrs", federation.DropOutsideOverlay
				}
				for _, q := range localPrefixes {
					if why == "" && p.Overlaps(q) {
						why, reason = "overlaps this cluster's "+q.String(), federation.DropOverlapsLocal
					}
				}
				for _, u := range under {
					if why == "" && p.Contains(u) {
						why, reason = "covers the underlay address "+u.String(), federation.DropCoversUnderlay
					}
				}
				for _, c := range claims {
					if why == "" && c.td != f && p.Overlaps(c.p) {
						why, reason = "overlaps "+c.p.String()+" of "+c.td, federation.DropOverlapsPeer
					}
				}
				if why != "" {
					drop(t, f, "prefix "+s, reason, why)
					continue
				}
				keep = append(keep, s)
			}
			t.AllowedIPs = keep
			pl.Peers = append(pl.Peers, tunnelProto(t, f))
		}
	}
	return pl
}
