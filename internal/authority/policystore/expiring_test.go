package policystore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestRevokeExpiringDropsAfterNotAfter: serials revoked until their
// NotAfter (an evicted agent's SVIDs) stay on the deny-list through every
// new version until then and leave with the first version after it; a
// serial revoked by hand stays for good; apply and rollback keep them.
func TestRevokeExpiringDropsAfterNotAfter(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	if _, err := s.RevokeExpiring(ctx, "admin", []Expiring{{Serial: "aa", NotAfter: now.Add(time.Hour)}}, ""); !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("no policy yet: %v", err)
	}
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil {
		t.Fatal(err)
	}
	v, err := s.RevokeExpiring(ctx, "admin", []Expiring{{Serial: "AA", NotAfter: now.Add(time.Hour)}, {Serial: "bb", NotAfter: now.Add(2 * time.Hour)},
		{Serial: "cc", NotAfter: now.Add(time.Hour)}}, "agent evicted")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Bundle.DenyList.Serials, []string{"aa", "bb", "cc"}) || len(v.SerialsNotAfter) != 3 {
		t.Fatalf("after revoke: %v %v", v.Bundle.DenyList.Serials, v.SerialsNotAfter)
	}
	if v, err = s.Revoke(ctx, "admin", nil, []string{"cc"}, false, "for good"); err != nil {
		t.Fatal(err)
	}
	if v, err = s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(denyAll)}, ""); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Bundle.DenyList.Serials, []string{"aa", "bb", "cc"}) || len(v.SerialsNotAfter) != 2 {
		t.Fatalf("apply before any NotAfter: %v %v", v.Bundle.DenyList.Serials, v.SerialsNotAfter)
	}
	now = now.Add(90 * time.Minute)
	if v, err = s.Rollback(ctx, "admin", 1, ""); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Bundle.DenyList.Serials, []string{"bb", "cc"}) || len(v.SerialsNotAfter) != 1 {
		t.Fatalf("past aa's NotAfter: %v %v", v.Bundle.DenyList.Serials, v.SerialsNotAfter)
	}
	now = now.Add(time.Hour)
	if v, err = s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Bundle.DenyList.Serials, []string{"cc"}) || v.SerialsNotAfter != nil {
		t.Fatalf("past every NotAfter: %v %v (cc was revoked by hand: for good)", v.Bundle.DenyList.Serials, v.SerialsNotAfter)
	}
}

// TestRevokeExpiringOutlivesClockSkew: a serial revoked until its NotAfter
// is not dropped by an authority whose clock runs ahead of a proxy's by
// less than PruneSkew (the proxy still takes the certificate as current):
// kept through a version written just past the NotAfter, dropped past it
// by PruneSkew.
func TestRevokeExpiringOutlivesClockSkew(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil {
		t.Fatal(err)
	}
	notAfter := now.Add(time.Hour)
	if _, err := s.RevokeExpiring(ctx, "admin", []Expiring{{Serial: "aa", NotAfter: notAfter}}, "agent evicted"); err != nil {
		t.Fatal(err)
	}
	now = notAfter.Add(time.Minute) // this authority's clock, a minute ahead of a proxy's
	v, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(denyAll)}, "")
	if err != nil || !slices.Equal(v.Bundle.DenyList.Serials, []string{"aa"}) {
		t.Fatalf("just past NotAfter: %v %v", v.Bundle.DenyList.Serials, err)
	}
	now = notAfter.Add(PruneSkew + time.Second)
	if v, err = s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil || len(v.Bundle.DenyList.Serials) != 0 {
		t.Fatalf("past NotAfter by PruneSkew: %v %v", v.Bundle.DenyList.Serials, err)
	}
}
