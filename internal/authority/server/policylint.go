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
		if m, err := ps.FederationLint(ctx); err == nil && m.Strict() {
			s.log.Info("policy.federation_lint is warn here, but the cluster's stored mode is strict and this authority enforces it "+
				"(lower it only with `ward policy lint-mode warn`)", "set_by", m.Actor, "changed", m.Changed)
		}
		return
	}
	// Strict is a property of the cluster's policy store, not of one
	// replica: record it there (audited) so every authority sharing the
	// store refuses what this one refuses.
	raised, err := ps.RaiseFederationLint(ctx, "authority "+s.memberName(), "policy.federation_lint: strict in this authority's configuration")
	if err != nil {
		s.log.Error("recording policy.federation_lint: strict in the policy store failed: other authorities sharing the store may "+
			"still accept sets this one refuses; this authority enforces strict itself", "err", err)
	} else if raised {
		s.log.Info("policy.federation_lint: strict recorded in the policy store: every authority sharing it now refuses such sets " +
			"(lower it only with `ward policy lint-mode warn`)")
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
