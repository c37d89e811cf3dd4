package policystore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

type auditLog struct {
	mu   sync.Mutex
	ops  []string
	fail bool
}

func (a *auditLog) Record(_ context.Context, ev audit.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail {
		return errors.New("audit down")
	}
	a.ops = append(a.ops, ev.Operation+":"+ev.Result)
	return nil
}

func newStore(t *testing.T) (*Store, *auditLog) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := &auditLog{}
	return New(st, a), a
}

const allowAB = `@id("a-to-b")
permit(principal == Workload::"spiffe://td/a", action == Action::"connect", resource == Service::"b");`

const denyAll = `@id("deny-b")
forbid(principal, action == Action::"connect", resource == Service::"b");`

func req(p string) policy.Request {
	return policy.Request{Principal: p, Action: policy.ActionConnect, Resource: policy.Resource{Type: policy.TypeService, Name: "b", Port: 443}}
}

func TestApplyRollbackRevoke(t *testing.T) {
	ctx := context.Background()
	s, a := newStore(t)
	if _, err := s.Get(ctx, 0); !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("empty store: %v", err)
	}
	v1, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, "first")
	if err != nil || v1.Number != 1 || v1.PolicyCount != 1 {
		t.Fatalf("apply: %+v %v", v1, err)
	}
	// A syntax error stores nothing and names file, line and column.
	_, err = s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB), "bad.cedar": []byte("permit(principal,\n  action resource);")}, "")
	if err == nil || !strings.Contains(err.Error(), "bad.cedar:2:") {
		t.Fatalf("syntax error not reported with position: %v", err)
	}
	if cur, _ := s.Current(ctx); cur != 1 {
		t.Fatalf("a failed apply moved current to %d", cur)
	}
	v2, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB), "d.cedar": []byte(denyAll)}, "")
	if err != nil || v2.Number != 2 {
		t.Fatal(err)
	}
	set, _ := s.Compile(v2.Bundle)
	if set.Decide(req("spiffe://td/a")).Allowed {
		t.Fatal("v2 should deny")
	}
	v3, err := s.Revoke(ctx, "admin", []string{"spiffe://td/a"}, []string{"0A:FF"}, false, "compromised")
	if err != nil || len(v3.Bundle.DenyList.SPIFFEIDs) != 1 || v3.Bundle.DenyList.Serials[0] != "aff" {
		t.Fatalf("revoke: %+v %v", v3.Bundle.DenyList, err)
	}
	// Rollback to v1 restores policies but keeps the deny-list.
	v4, err := s.Rollback(ctx, "admin", 1, "")
	if err != nil || v4.RestoredFrom != 1 || len(v4.Bundle.DenyList.SPIFFEIDs) != 1 {
		t.Fatalf("rollback: %+v %v", v4, err)
	}
	set, _ = s.Compile(v4.Bundle)
	if d := set.Decide(req("spiffe://td/a")); d.Allowed || d.Cause != policy.CauseDenyList {
		t.Fatalf("rolled back set should still deny the revoked ID: %+v", d)
	}
	v5, err := s.Revoke(ctx, "admin", []string{"spiffe://td/a"}, nil, true, "")
	if err != nil {
		t.Fatal(err)
	}
	set, _ = s.Compile(v5.Bundle)
	if !set.Decide(req("spiffe://td/a")).Allowed {
		t.Fatal("unrevoked ID with the v1 policies should be allowed")
	}
	if _, err := s.Rollback(ctx, "admin", 99, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rollback to missing version: %v", err)
	}
	vs, cur, err := s.List(ctx)
	if err != nil || len(vs) != 5 || cur != 5 {
		t.Fatalf("list: %d versions, current %d, %v", len(vs), cur, err)
	}
	want := "policy.apply:started"
	if a.ops[0] != want {
		t.Fatalf("first audit op %q", a.ops[0])
	}
}

func TestAuditDownChangesNothing(t *testing.T) {
	ctx := context.Background()
	s, a := newStore(t)
	a.fail = true
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err == nil {
		t.Fatal("apply succeeded without audit")
	}
	if cur, _ := s.Current(ctx); cur != 0 {
		t.Fatal("unaudited apply was stored")
	}
}

func TestConcurrentAppliesGetDistinctVersions(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	vs, cur, _ := s.List(ctx)
	if len(vs) != 8 || cur != 8 {
		t.Fatalf("%d versions, current %d", len(vs), cur)
	}
}

func TestWatchPushesNewVersions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _ := newStore(t)
	s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, "")
	got := make(chan uint64, 10)
	go s.Watch(ctx, 0, func(v Version) error { got <- v.Number; return nil })
	if n := <-got; n != 1 {
		t.Fatalf("first pushed version %d", n)
	}
	s.Apply(ctx, "admin", map[string][]byte{"d.cedar": []byte(denyAll)}, "")
	select {
	case n := <-got:
		if n != 2 {
			t.Fatalf("pushed %d", n)
		}
	case <-ctx.Done():
		t.Fatal("new version not pushed")
	}
}

// TestErrorKindsAndEvents: errors carry the kinds the policy API has always
// answered with (compile error Invalid, missing version NotFound, anything
// else Precondition), and events carry caller, result and policy_version.
func TestErrorKindsAndEvents(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var events []audit.Event
	s := New(st, audit.RecorderFunc(func(_ context.Context, ev audit.Event) error { events = append(events, ev); return nil }))
	ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "admin:uid=0", RequestID: "req-1"})
	if _, err := s.Get(ctx, 0); errs.KindOf(err) != errs.NotFound || !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("Get with no policy: %v (%v)", err, errs.KindOf(err))
	}
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"bad.cedar": []byte("permit(")}, ""); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("Apply of a syntax error: %v (%v)", err, errs.KindOf(err))
	} else if ce := (*policy.CompileError)(nil); !errors.As(err, &ce) {
		t.Fatalf("the compile error is lost: %v", err)
	}
	if _, err := s.Apply(ctx, "admin", nil, ""); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("Apply of nothing: %v (%v)", err, errs.KindOf(err))
	}
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(allowAB)}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rollback(ctx, "admin", 9, ""); errs.KindOf(err) != errs.NotFound || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rollback to a missing version: %v (%v)", err, errs.KindOf(err))
	}
	var results []string
	for _, ev := range events {
		if ev.Actor != "admin:uid=0" || ev.RequestID != "req-1" || ev.Time.IsZero() {
			t.Fatalf("event without its caller: %+v", ev)
		}
		if _, ok := ev.Fields["phase"]; ok {
			t.Fatalf("event carries the phase field: %+v", ev)
		}
		results = append(results, ev.Operation+":"+ev.Result+":"+ev.Fields["policy_version"])
	}
	want := "policy.apply:started: policy.apply:error: policy.apply:started: policy.apply:ok:1"
	if got := strings.Join(results, " "); got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}
