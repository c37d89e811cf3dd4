package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/reqctx"
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
// followPolicyLint, which reads the same cached result: the current
// version is compiled once).
func (s *Server) logWarnedInForce(ctx context.Context, ps *policystore.Store) {
	ls, err := ps.LintStatus(ctx)
	n, places := ls.Version, ls.Warnings
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

// applyRestoreRecord carries out, at the first unseal after `ward
// operator backup restore`, what the restore decided about the federation
// lint mode (backup.Record): by default the stricter of the backup's
// stored mode and strict (the restore cannot read the mode of the cluster
// it replaced), so a backup taken in warn mode never lowers a cluster
// that had turned strict; with --keep-backup-lint-mode the backup's mode
// stands. Either way it is audited (operator.backup.restore: the backup,
// the choice, the backup's mode and the mode now; a raise also as
// policy.federation_lint, set_by "backup restore"). It runs before the
// unsealed authority serves anything, and an error keeps it sealed (the
// record stays for the next unseal): no call is ever served under a mode
// the restore was to raise. The record is deleted once audited.
func (s *Server) applyRestoreRecord(ctx context.Context, st *unsealedState) error {
	kv, err := s.raw.Get(ctx, backup.RecordKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading it: %w", err)
	}
	ctx = reqctx.With(ctx, reqctx.Caller{Actor: "system:restore", RequestID: reqctx.NewRequestID()})
	rec, readable := backup.ParseRecord(kv.Value)
	fields := map[string]string{"policy_lint": rec.PolicyLint, "backup_created": rec.BackupCreated.Format(time.RFC3339),
		"backup_payload_sha256": rec.PayloadSHA256, "backup_key_id": rec.KeyID, "restored": rec.Restored.Format(time.RFC3339)}
	if !readable {
		fields["record"] = "unreadable: applied as policy_lint=stricter"
	}
	was, err := st.policy.FederationLint(ctx)
	if err != nil {
		return fmt.Errorf("reading the restored federation lint mode: %w", err)
	}
	fields["backup_lint_mode"] = was.Mode
	if rec.PolicyLint == backup.LintStricter {
		comment := fmt.Sprintf("restored from the backup of %s (payload sha256 %s), whose stored mode was %s: a restore keeps the stricter mode "+
			"(ward operator backup restore --keep-backup-lint-mode lets the backup's stand)", fields["backup_created"], rec.PayloadSHA256, was.Mode)
		if _, err := st.policy.RaiseFederationLint(ctx, "backup restore", comment); err != nil {
			return fmt.Errorf("raising the restored federation lint mode to strict: %w", err)
		}
	}
	now, err := st.policy.FederationLint(ctx)
	if err != nil {
		return fmt.Errorf("reading the federation lint mode after the restore: %w", err)
	}
	fields["lint_mode"] = now.Mode
	ev := audit.NewEvent(ctx, "operator.backup.restore", audit.ResultOK)
	ev.Fields = fields
	if err := st.recorder.Record(ctx, ev); err != nil {
		return fmt.Errorf("auditing the restore: %w", err)
	}
	if _, err := s.raw.Batch(ctx, []store.Op{{Key: backup.RecordKey, Delete: true, ExpectRevision: kv.Revision}}); err != nil && !errors.Is(err, store.ErrConflict) {
		s.log.Error("deleting the applied restore record failed: the next unseal audits it again", "err", err)
	}
	switch {
	case rec.PolicyLint == backup.LintFromBackup:
		s.log.Warn("restored from a backup with --keep-backup-lint-mode: the backup's federation lint mode stands", "mode", now.Mode, "backup_created", fields["backup_created"])
	case was.Mode != now.Mode:
		s.log.Warn("restored from a backup taken in federation lint mode "+was.Mode+": the authority keeps the stricter mode, strict (audited); "+
			"if the cluster it replaces was in warn mode, lower it with `ward policy lint-mode warn -m ...` (audited)", "backup_created", fields["backup_created"])
	default:
		s.log.Info("restored from a backup; federation lint mode unchanged", "mode", now.Mode, "backup_created", fields["backup_created"])
	}
	return nil
}
