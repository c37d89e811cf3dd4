package nodeapi

import (
	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/policystore"
)

// policyDistribution streams the authority's policy versions to agents,
// which relay them to the proxies on their node. authStream ends the
// stream when its agent is no longer current.
type policyDistribution struct {
	wardv1.UnimplementedPolicyDistributionServer
	ps *policystore.Store
}

func (p *policyDistribution) WatchPolicy(r *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	return apiconv.WatchPolicy(p.ps, r, ss)
}
