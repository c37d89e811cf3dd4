package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wardproject/ward/internal/authority/policystore"
)

// reportStoredPolicyLint logs, at unseal with policy.federation_lint:
// strict (this authority's or the cluster's stored mode), a current policy version whose permits the lint would refuse
// now (stored before strict was set, or restored from a backup): it stays
// in force (refusing to serve it would deny everything), and the log says
// which permits to fix and how. Every new set is checked by the store.
func (s *Server) reportStoredPolicyLint(ctx context.Context, st *unsealedState) {
	ps := st.policy
	if !s.cfg.Policy.StrictFederationLint() {
		if m, err := ps.FederationLint(ctx); err == nil && m.Strict() {
			s.log.Info("policy.federation_lint is warn here, but the cluster's stored mode is strict and this authority enforces it "+
				"(lower it only with `ward policy lint-mode warn`)", "set_by", m.Actor, "changed", m.Changed)
			s.logWarnedInForce(ctx, ps)
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
	s.logWarnedInForce(ctx, ps)
}

// logWarnedInForce logs a current version with permits strict refuses
// (also on /healthz, the dashboard and ward_policy_lint_warnings, see
// followPolicyLint).
func (s *Server) logWarnedInForce(ctx context.Context, ps *policystore.Store) {
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

// followPolicyLint keeps st.policyLint current: read at unseal and again
// at every change of the policy store (a new version, the lint mode set
// by any authority sharing the store). The current version is compiled
// once per version (policystore.LintStatus). A failed read keeps the last
// known state. It ends with ctx (at seal).
func (s *Server) followPolicyLint(ctx context.Context, st *unsealedState) {
	refresh := func() {
		ls, err := st.policy.LintStatus(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("checking the current policy version against the federation lint failed; /healthz and the metrics keep the last result", "err", err)
			}
			return
		}
		st.policyLint.Store(&ls)
	}
	for ctx.Err() == nil {
		ch, err := st.policy.Changes(ctx)
		refresh() // after subscribing: no change is lost in between
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for range ch {
			for drained := false; !drained; { // one refresh for a burst (a commit writes several keys)
				select {
				case _, ok := <-ch:
					drained = !ok
				default:
					drained = true
				}
			}
			refresh()
		}
	}
}

// policyLintWarning is the warning for a current policy version in force
// under strict with permits strict refuses ("" if none, or not known:
// sealed). detail names the permits (the dashboard, behind its token);
// without it the warning names none (/healthz answers anyone).
func (s *Server) policyLintWarning(detail bool) string {
	st := s.unsealed.Load()
	if st == nil {
		return ""
	}
	ls := st.policyLint.Load()
	if ls == nil || !ls.WarnedInForce() {
		return ""
	}
	w := fmt.Sprintf("policy: version %d, in force, has %d permit(s) that do not constrain the caller's trust domain, which the strict federation lint refuses "+
		"(stored before strict, or restored from a backup)", ls.Version, len(ls.Warnings))
	if detail {
		return w + ": " + strings.Join(ls.Warnings, "; ") + "; fix each and apply the set again"
	}
	return w + ": `ward policy lint-mode` names them; fix each and apply the set again"
}

// policyLintCollector exports ward_policy_lint_warnings: the current
// version's permits the federation lint warns about, by the mode this
// authority enforces (alert on mode="strict" > 0).
type policyLintCollector struct{ s *Server }

var policyLintDesc = prometheus.NewDesc("ward_policy_lint_warnings",
	"Permits of the current policy version that do not constrain the caller's trust domain (federation lint warnings), labelled with the mode this authority enforces; "+
		"with mode=\"strict\" above 0 such a version is in force only because it was stored before strict or restored from a backup.", []string{"mode"}, nil)

func (c policyLintCollector) Describe(ch chan<- *prometheus.Desc) { ch <- policyLintDesc }

func (c policyLintCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.unsealed.Load()
	if st == nil {
		return
	}
	ls := st.policyLint.Load()
	if ls == nil {
		return
	}
	mode := policystore.LintWarn
	if ls.Strict {
		mode = policystore.LintStrict
	}
	ch <- prometheus.MustNewConstMetric(policyLintDesc, prometheus.GaugeValue, float64(len(ls.Warnings)), mode)
}
