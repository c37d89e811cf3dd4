package adminapi

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/ha"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Clustered is the authority as the Cluster service sees it: its place
// among the authorities sharing its store (docs/ha.md).
type Clustered interface {
	ClusterStatus(ctx context.Context) (ha.Status, error)
}

// RegisterCluster serves the Cluster service (`ward operator status`'s
// leader and members) over c.
func RegisterCluster(g *grpc.Server, c Clustered) {
	wardv1.RegisterClusterServer(g, &clusterService{c: c})
}

type clusterService struct {
	wardv1.UnimplementedClusterServer
	c Clustered
}

func (s *clusterService) Status(ctx context.Context, _ *wardv1.ClusterStatusRequest) (*wardv1.ClusterStatusResponse, error) {
	st, err := s.c.ClusterStatus(ctx)
	if err != nil && st.Mode == "" {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ClusterStatusResponse{Mode: st.Mode, Self: memberPB(st.Self), IsLeader: st.IsLeader, Term: st.Term,
		LeaseTtlSeconds: int64(st.LeaseTTL.Seconds())}
	if st.Leader.Name != "" {
		out.Leader = memberPB(st.Leader)
	}
	for _, m := range st.Members {
		out.Members = append(out.Members, memberPB(m))
	}
	return out, nil // on err: what this authority knows; etcd did not answer the rest
}

func memberPB(m ha.Member) *wardv1.ClusterMember {
	pb := &wardv1.ClusterMember{Name: m.Name, Address: m.Address, Version: m.Version}
	if !m.Since.IsZero() {
		pb.Since = timestamppb.New(m.Since)
	}
	return pb
}
