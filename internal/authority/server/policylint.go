package server

import (
	"context"
	"strings"

	"github.com/wardproject/ward/internal/authority/policystore"
)

// reportStoredPolicyLint logs, at unseal with policy.federation_lint:
// strict, a current policy version whose permits the lint would refuse
// now (stored before strict was set, or restored from a backup): it stays
// in force (refusing to serve it would deny everything), and the log says
// which permits to fix and how. Every new set is checked by the store.
func (s *Server) reportStoredPolicyLint(ctx context.Context, ps *policystore.Store) {
	if !s.cfg.Policy.StrictFederationLint() {
		return
	}
	n, places, err := ps.CurrentFederationWarnings(ctx)
	if err != nil {
		s.log.Warn("checking the current policy version against policy.federation_lint failed", "err", err)
		return
	}
	if len(places) > 0 {
		s.log.Warn("the current policy version was stored before policy.federation_lint: strict (or restored from a backup) and has permits "+
			"that do not constrain the caller's trust domain; it stays in force, but the next apply must fix them: add a trust-domain "+
			"condition (`principal in TrustDomain::\"<your trust domain>\"`) or @federated(\"allow\") to each",
			"policy_version", n, "policies", strings.Join(places, "; "))
	}
}
