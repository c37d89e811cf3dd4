package policystore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// TestStoredLintModeIsSharedAndRaceFree: two Stores over one backing store
// (two authorities over one etcd): the warn one enforces the mode the
// strict one raised, on Apply, Rollback and Check; the raise is audited,
// only SetFederationLint lowers it, an unreadable stored mode is enforced
// as strict, and an apply on the warn store that read the old mode
// before the raise landed (the race) is refused, not stored.
func TestStoredLintModeIsSharedAndRaceFree(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	evA, evB := &events{}, &events{}
	open := map[string][]byte{"a.cedar": []byte(openByPath)}

	// The race: B raises after A read the head and the warn mode, just
	// before A's batch (version + head) lands.
	var b *Store
	raisedOnce := false
	a := New(beforeBatch{st, func(ctx context.Context) error {
		if raisedOnce || b == nil {
			return nil
		}
		raisedOnce = true
		_, err := b.RaiseFederationLint(ctx, "authority b", "config")
		return err
	}}, evA)
	v1, err := a.Apply(ctx, "admin", open, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(fencedByPath)}, ""); err != nil {
		t.Fatal(err)
	}
	b = New(st, evB, WithStrictFederationLint(true))
	_, err = a.Apply(ctx, "admin", map[string][]byte{"b.cedar": []byte(openByLabel)}, "")
	if !raisedOnce || err == nil || errs.KindOf(err) != errs.Invalid {
		t.Fatalf("an apply that raced the raise was stored (raised %v): %v", raisedOnce, err)
	}
	if m, err := a.FederationLint(ctx); err != nil || !m.Strict() || m.Actor != "authority b" {
		t.Fatalf("stored mode: %+v %v", m, err)
	}
	if ev := evB.last(); ev.Operation != "policy.federation_lint" || ev.Result != audit.ResultOK || ev.Fields["mode"] != "strict" || ev.Fields["set_by"] != "authority b" {
		t.Fatalf("the raise is not audited: %+v", ev)
	}
	if again, err := b.RaiseFederationLint(ctx, "authority b", "config"); err != nil || again {
		t.Fatalf("a second raise changed something: %v %v", again, err)
	}
	if _, _, err := a.Check(ctx, open); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("warn store's Check under stored strict: %v", err)
	}
	if _, err := a.Rollback(ctx, "admin", v1.Number, ""); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("warn store's rollback under stored strict: %v", err)
	}

	// Lowering: only the explicit action, audited.
	if _, err := a.SetFederationLint(ctx, "uid:0", "off", ""); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("an unknown mode: %v", err)
	}
	m, err := a.SetFederationLint(ctx, "uid:0", LintWarn, "why")
	if err != nil || m.Mode != LintWarn || m.Actor != "uid:0" || m.Comment != "why" {
		t.Fatalf("lowering: %+v %v", m, err)
	}
	if ev := evA.last(); ev.Fields["mode"] != "warn" || ev.Fields["previous_mode"] != "strict" || ev.Fields["set_by"] != "uid:0" {
		t.Fatalf("the lowering is not audited: %+v", ev)
	}
	if _, _, err := b.Check(ctx, open); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("the strict store follows the lowered mode: %v", err)
	}
	if _, err := a.Apply(ctx, "admin", open, ""); err != nil {
		t.Fatalf("warn store after lowering: %v", err)
	}

	// An unreadable stored mode fails closed.
	if _, err := st.Put(ctx, lintModeKey, []byte("{garbage")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Check(ctx, map[string][]byte{"c.cedar": []byte(openByLabel)}); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("an unreadable mode was not enforced as strict: %v", err)
	}
}

// beforeBatch runs hook before every Batch through it.
type beforeBatch struct {
	store.Store
	hook func(ctx context.Context) error
}

func (s beforeBatch) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	if err := s.hook(ctx); err != nil {
		return 0, err
	}
	return s.Store.Batch(ctx, ops)
}

// TestFirstApplyRacingTheRaiseIsRefused (attack, red team): with no
// policy yet there is no head for the raise to rewrite, so an apply on a
// warn authority that read the warn mode before another authority raised
// it to strict (at its first unseal), and committed after, stored a set
// strict refuses as the cluster's first version. The apply's batch now
// carries a condition on the mode it read.
func TestFirstApplyRacingTheRaiseIsRefused(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := New(st, &events{}, WithStrictFederationLint(true))
	raisedOnce := false
	a := New(beforeBatch{st, func(ctx context.Context) error {
		if raisedOnce {
			return nil
		}
		raisedOnce = true
		_, err := b.RaiseFederationLint(ctx, "authority b", "config")
		return err
	}}, &events{})
	_, err = a.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(openByPath)}, "")
	if !raisedOnce || err == nil || errs.KindOf(err) != errs.Invalid {
		t.Fatalf("a first apply that raced the raise was stored (raised %v): %v", raisedOnce, err)
	}
	if n, err := a.Current(ctx); err != nil || n != 0 {
		t.Fatalf("current version %d (%v), want none stored", n, err)
	}
	// Without a race the warn store's guard changes nothing it stores:
	// the mode stays strict, and a fenced set applies.
	if _, err := a.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(fencedByPath)}, ""); err != nil {
		t.Fatal(err)
	}
	if m, err := a.FederationLint(ctx); err != nil || !m.Strict() || m.Actor != "authority b" {
		t.Fatalf("stored mode: %+v %v", m, err)
	}
}

// TestApplyInWarnModeKeepsTheStoredMode: the guard a warn apply with
// warnings adds (the mode it read, rewritten as it is) leaves the stored
// mode unchanged, absent or warn.
func TestApplyInWarnModeKeepsTheStoredMode(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := New(st, &events{})
	open := map[string][]byte{"a.cedar": []byte(openByPath)}
	if _, err := a.Apply(ctx, "admin", open, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, lintModeKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a warn apply stored a mode: %v", err)
	}
	if _, err := a.SetFederationLint(ctx, "uid:0", LintStrict, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetFederationLint(ctx, "uid:0", LintWarn, "why"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, "admin", map[string][]byte{"b.cedar": []byte(openByLabel)}, ""); err != nil {
		t.Fatal(err)
	}
	if m, err := a.FederationLint(ctx); err != nil || m.Mode != LintWarn || m.Actor != "uid:0" || m.Comment != "why" {
		t.Fatalf("stored mode after a warn apply: %+v %v", m, err)
	}
}

// TestLintStatus: the current version's federation warnings with the mode
// enforced; WarnedInForce only under strict (stored or local); a fixed
// set clears them; no policy, no warnings.
func TestLintStatus(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if ls, err := s.LintStatus(ctx); err != nil || ls.Version != 0 || ls.Strict || len(ls.Warnings) != 0 {
		t.Fatalf("empty store: %+v %v", ls, err)
	}
	open := map[string][]byte{"p.cedar": []byte("@id(\"open\")\npermit (principal, action == Action::\"connect\", resource == Service::\"b\");\n")}
	if _, err := s.Apply(ctx, "admin", open, ""); err != nil {
		t.Fatal(err)
	}
	ls, err := s.LintStatus(ctx)
	if err != nil || ls.Version != 1 || ls.Strict || ls.WarnedInForce() || len(ls.Warnings) != 1 || !strings.Contains(ls.Warnings[0], `(policy "open")`) {
		t.Fatalf("warn mode: %+v %v", ls, err)
	}
	if _, err := s.SetFederationLint(ctx, "admin", LintStrict, ""); err != nil {
		t.Fatal(err)
	}
	if ls, err = s.LintStatus(ctx); err != nil || !ls.Strict || !ls.WarnedInForce() {
		t.Fatalf("stored strict: %+v %v", ls, err)
	}
	fenced := map[string][]byte{"p.cedar": []byte("@id(\"fenced\")\npermit (principal in TrustDomain::\"td\", action == Action::\"connect\", resource == Service::\"b\");\n")}
	if _, err := s.Apply(ctx, "admin", fenced, ""); err != nil {
		t.Fatal(err)
	}
	if ls, err = s.LintStatus(ctx); err != nil || ls.Version != 2 || ls.WarnedInForce() || len(ls.Warnings) != 0 {
		t.Fatalf("after the fix: %+v %v", ls, err)
	}
	local := New(s.st, &auditLog{}, WithStrictFederationLint(true))
	if _, err := s.SetFederationLint(ctx, "admin", LintWarn, ""); err != nil {
		t.Fatal(err)
	}
	if ls, err = local.LintStatus(ctx); err != nil || !ls.Strict || ls.Stored.Mode != LintWarn {
		t.Fatalf("local strict: %+v %v", ls, err)
	}
}
