package policystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Federation lint modes (policy.federation_lint).
const (
	LintWarn   = "warn"
	LintStrict = "strict"
)

// lintModeKey holds the cluster's federation lint mode beside the policy
// versions (barrier-encrypted like them): one value for every authority
// sharing the store, so strict does not depend on which replica a client
// reaches. Not under "policy/v/" (the versions' prefix).
const lintModeKey = "policy/federation-lint"

// LintMode is the stored federation lint mode and who set it last.
type LintMode struct {
	Mode    string    `json:"mode"`
	Actor   string    `json:"actor,omitempty"`
	Changed time.Time `json:"changed,omitempty"`
	Comment string    `json:"comment,omitempty"`
}

// Strict reports whether m refuses sets the lint warns about.
func (m LintMode) Strict() bool { return m.Mode == LintStrict }

// FederationLint returns the cluster's stored lint mode (warn, with no
// actor, when none was ever stored).
func (s *Store) FederationLint(ctx context.Context) (_ LintMode, err error) {
	defer func() { err = classify(err) }()
	m, _, err := s.lintMode(ctx)
	return m, err
}

func (s *Store) lintMode(ctx context.Context) (LintMode, int64, error) {
	kv, err := s.st.Get(ctx, lintModeKey)
	if errors.Is(err, store.ErrNotFound) {
		return LintMode{Mode: LintWarn}, 0, nil
	}
	if err != nil {
		return LintMode{}, 0, fmt.Errorf("reading the stored federation lint mode: %w", err)
	}
	return parseLintMode(kv.Value), kv.Revision, nil
}

// parseLintMode reads a stored mode; an unreadable one is enforced as
// strict (fail closed).
func parseLintMode(b []byte) LintMode {
	var m LintMode
	if err := json.Unmarshal(b, &m); err != nil || (m.Mode != LintWarn && m.Mode != LintStrict) {
		return LintMode{Mode: LintStrict}
	}
	return m
}

// strict is the mode every store path enforces: this authority's own
// policy.federation_lint or the cluster's stored mode, whichever is
// stricter. An unreadable store refuses (the caller fails).
func (s *Store) strict(ctx context.Context) (bool, error) {
	if s.strictFed {
		return true, nil
	}
	m, _, err := s.lintMode(ctx)
	if err != nil {
		return false, err
	}
	return m.Strict(), nil
}

// strictGuard is strict and, when not strict by this authority's own
// configuration, the condition a store path that relied on a stored warn
// mode puts in its batch: the mode key rewritten as read at its revision,
// or deleted while it must not exist (no write when absent).
func (s *Store) strictGuard(ctx context.Context) (bool, []store.Op, error) {
	if s.strictFed {
		return true, nil, nil
	}
	kv, err := s.st.Get(ctx, lintModeKey)
	if errors.Is(err, store.ErrNotFound) {
		return false, []store.Op{{Key: lintModeKey, Delete: true, ExpectRevision: 0}}, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("reading the stored federation lint mode: %w", err)
	}
	if m := parseLintMode(kv.Value); m.Strict() {
		return true, nil, nil
	}
	return false, []store.Op{{Key: lintModeKey, Value: kv.Value, ExpectRevision: kv.Revision}}, nil
}

// RaiseFederationLint records strict as the cluster's mode if it is not
// already (an authority started with policy.federation_lint: strict does
// this at unseal), audited as policy.federation_lint with the actor; it
// reports whether it changed the stored mode. Nothing ever lowers the
// mode but SetFederationLint.
func (s *Store) RaiseFederationLint(ctx context.Context, actor, comment string) (bool, error) {
	_, changed, err := s.changeLintMode(ctx, actor, LintStrict, comment)
	return changed, classify(err)
}

// SetFederationLint is the explicit, audited operator action that sets the
// cluster's mode (`ward policy lint-mode warn|strict`), the only way to
// lower it to warn. An authority whose own configuration says strict still
// enforces strict on its store paths, and raises the stored mode again at
// its next unseal.
func (s *Store) SetFederationLint(ctx context.Context, actor, mode, comment string) (LintMode, error) {
	mode = strings.TrimSpace(mode)
	if mode != LintWarn && mode != LintStrict {
		return LintMode{}, errs.Errorf(errs.Invalid, "federation lint mode %q: want warn or strict", mode)
	}
	if len(comment) > 1024 {
		return LintMode{}, errs.Errorf(errs.Invalid, "comment too long (%d bytes, at most 1024)", len(comment))
	}
	m, err := s.setFederationLint(ctx, actor, mode, comment)
	return m, classify(err)
}

func (s *Store) setFederationLint(ctx context.Context, actor, mode, comment string) (LintMode, error) {
	m, changed, err := s.changeLintMode(ctx, actor, mode, comment)
	if err != nil || !changed {
		return m, err
	}
	return s.FederationLint(ctx)
}

// changeLintMode stores mode unless it is already the stored one (then it
// returns that, changed false), retrying a lost race a bounded number of
// times.
func (s *Store) changeLintMode(ctx context.Context, actor, mode, comment string) (LintMode, bool, error) {
	for range 16 {
		m, rev, err := s.lintMode(ctx)
		if err != nil {
			return LintMode{}, false, err
		}
		if m.Mode == mode {
			return m, false, nil
		}
		// ok with an error: stored, but its audit event failed
		ok, err := s.storeLintMode(ctx, actor, mode, m.Mode, comment, rev)
		if err != nil || ok {
			return LintMode{}, ok, err
		}
	}
	return LintMode{}, false, errs.Errorf(errs.Precondition, "the federation lint mode is being changed concurrently by another authority: retry")
}

// storeLintMode writes mode if the key is still at rev (false on a lost
// race), audited before (started: no audit, no change) and after.
func (s *Store) storeLintMode(ctx context.Context, actor, mode, from, comment string, rev int64) (bool, error) {
	const op = "policy.federation_lint"
	fields := map[string]string{"mode": mode, "previous_mode": from, "set_by": actor}
	if comment != "" {
		fields["comment"] = comment
	}
	if err := s.record(ctx, op, audit.ResultStarted, 0, fields, nil); err != nil {
		return false, fmt.Errorf("audit log unavailable, %s refused: %w", op, err)
	}
	b, err := json.Marshal(LintMode{Mode: mode, Actor: actor, Changed: s.now().UTC(), Comment: comment})
	if err != nil {
		return false, err
	}
	ops := []store.Op{{Key: lintModeKey, Value: b, ExpectRevision: rev}}
	if mode == LintStrict {
		// Rewrite the policy head as it is, in the same batch: an apply
		// or rollback on another authority that read the head (and the
		// old mode) before this loses its compare-and-swap on the head,
		// reads again and meets strict. (With no policy yet there is no
		// head to guard, and none is created.)
		if hk, err := s.st.Get(ctx, s.versions.HeadKey()); err == nil {
			ops = append(ops, store.Op{Key: hk.Key, Value: hk.Value, ExpectRevision: hk.Revision})
		} else if !errors.Is(err, store.ErrNotFound) {
			return false, s.fail(ctx, op, fields, err)
		}
	}
	_, err = s.st.Batch(ctx, ops)
	if errors.Is(err, store.ErrConflict) {
		_ = s.record(ctx, op, audit.ResultError, 0, fields, errors.New("lost a race with another authority; retrying"))
		return false, nil
	}
	if err != nil {
		return false, s.fail(ctx, op, fields, err)
	}
	if err := s.record(ctx, op, audit.ResultOK, 0, fields, nil); err != nil {
		return true, fmt.Errorf("%s stored mode %s but its audit event could not be written: %w", op, mode, err)
	}
	return true, nil
}

// LocalStrict reports this authority's own policy.federation_lint: strict
// (WithStrictFederationLint).
func (s *Store) LocalStrict() bool { return s.strictFed }

// LintStatus is the federation lint as it stands: the mode enforced and
// the current version's permits the lint warns about.
type LintStatus struct {
	// Version is the current version (0: no policy).
	Version uint64
	// Stored is the cluster's stored mode; Strict whether this authority
	// enforces strict (its own configuration or the stored mode).
	Stored LintMode
	Strict bool
	// Warnings names each permit of the current version that does not
	// constrain the caller's trust domain (file:line:column and policy
	// id). Under Strict such a version is in force only because it was
	// stored before strict was set, or restored from a backup: the next
	// apply must fix them.
	Warnings []string
}

// WarnedInForce reports a current version with permits strict refuses.
func (l LintStatus) WarnedInForce() bool { return l.Strict && len(l.Warnings) > 0 }

// LintStatus reads the mode and checks the current version (compiled
// once per version: the result is kept for the next call).
func (s *Store) LintStatus(ctx context.Context) (_ LintStatus, err error) {
	defer func() { err = classify(err) }()
	m, _, err := s.lintMode(ctx)
	if err != nil {
		return LintStatus{}, err
	}
	out := LintStatus{Stored: m, Strict: s.strictFed || m.Strict()}
	cur, err := s.Current(ctx)
	if err != nil || cur == 0 {
		return out, err
	}
	out.Version = cur
	s.lintMu.Lock()
	cached, ok := s.lintCache[cur]
	s.lintMu.Unlock()
	if !ok {
		n, places, err := s.CurrentFederationWarnings(ctx)
		if err != nil {
			return out, err
		}
		out.Version, cached = n, places
		s.lintMu.Lock()
		s.lintCache = map[uint64][]string{n: places} // only the current one
		s.lintMu.Unlock()
	}
	out.Warnings = slices.Clone(cached)
	return out, nil
}

// Changes streams the changes of everything the policy store keeps
// (versions, head, lint mode, retention mark) until ctx ends or the
// backend drops the watch (then the channel is closed: watch again).
func (s *Store) Changes(ctx context.Context) (<-chan store.Event, error) {
	return s.st.Watch(ctx, "policy/")
}
