package nodeapi

import (
	"context"
	"net"
	"net/netip"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
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
	ep := r.Endpoint
	if ep == "" {
		if r.ListenPort == 0 || r.ListenPort > 65535 {
			return nil, status.Error(codes.InvalidArgument, "give endpoint (host:port) or listen_port (1-65535)")
		}
		p, _ := peer.FromContext(ctx)
		var host netip.Addr
		if p != nil && p.Addr != nil {
			if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
				host = ap.Addr().Unmap()
			}
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

func (n *nodeNetwork) WatchPeers(_ *wardv1.WatchPeersRequest, ss wardv1.NodeNetwork_WatchPeersServer) error {
	td := n.s.td.Name()
	err := n.s.cfg.Registry.WatchTunnels(ss.Context(), func(ts []registry.Tunnel) error {
		pl := &wardv1.PeerList{Peers: make([]*wardv1.Tunnel, 0, len(ts))}
		for _, t := range ts {
			pl.Peers = append(pl.Peers, tunnelProto(t, td))
		}
		return ss.Send(pl)
	})
	if ss.Context().Err() != nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return errs.ToStatus(err)
}
