package policystore

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/policy"
)

const (
	keyK = "00112233445566778899aabbccddeeff00112233"
	keyL = "ffeeddccbbaa99887766554433221100ffeeddcc"
)

func chainReq(keys ...string) policy.Request {
	r := req("spiffe://td/a")
	r.ChainKeyIDs = keys
	return r
}

// A tainted key survives every later change, on every authority sharing
// the store: apply, rollback to a version from before the taint, unrevoke.
func TestTaintKeysSurviveApplyRollbackAcrossAuthorities(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authA, authB := New(st, &auditLog{}), New(st, &auditLog{}) // two authorities, one store

	if _, err := authA.TaintKeys(ctx, "admin", []string{keyK}, ""); !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("taint before any policy: %v", err)
	}
	v1, err := authA.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, "before the taint")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authA.TaintKeys(ctx, "admin", []string{"nothex"}, ""); err == nil {
		t.Fatal("bad key ID accepted")
	}
	v2, err := authA.TaintKeys(ctx, "admin", []string{keyK}, "ca taint")
	if err != nil || v2.Number != 2 || !slices.Equal(v2.Bundle.DenyList.TaintedKeys, []string{keyK}) {
		t.Fatalf("taint: %+v %v", v2, err)
	}
	if again, err := authB.TaintKeys(ctx, "admin", []string{keyK}, ""); err != nil || again.Number != 2 {
		t.Fatalf("tainting again made a new version or failed: %d %v", again.Number, err)
	}
	denies := func(v Version, what string) {
		t.Helper()
		set, err := authA.Compile(v.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		if d := set.Decide(chainReq(keyL, keyK)); d.Allowed || d.Cause != policy.CauseTaintedKey {
			t.Errorf("%s (version %d): chain through the tainted key: %+v", what, v.Number, d)
		}
		if d := set.Decide(chainReq(keyL)); !d.Allowed {
			t.Errorf("%s (version %d): clean chain denied: %+v", what, v.Number, d)
		}
	}
	denies(v2, "taint")
	v3, err := authB.Rollback(ctx, "admin", v1.Number, "back to before the taint")
	if err != nil {
		t.Fatal(err)
	}
	denies(v3, "rollback on another authority")
	v4, err := authB.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, "")
	if err != nil {
		t.Fatal(err)
	}
	denies(v4, "apply on another authority")
	v5, err := authA.Revoke(ctx, "admin", []string{"spiffe://td/x"}, nil, true, "unrevoke")
	if err != nil {
		t.Fatal(err)
	}
	denies(v5, "unrevoke")
}

// WithTaintedKeys: the CA's tainted keys enter every version, so a taint
// made while no policy existed (or whose own version failed) still reaches
// the enforcement points with the next version.
func TestWithTaintedKeysJoinsEveryVersion(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := New(st, &auditLog{}, WithTaintedKeys(func() []string { return []string{keyK} }))
	v1, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v1.Bundle.DenyList.TaintedKeys, []string{keyK}) {
		t.Fatalf("first version lacks the CA's tainted key: %+v", v1.Bundle.DenyList)
	}
}
