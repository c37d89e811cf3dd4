package policystore

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// events keeps every audit event, fields included.
type events struct {
	mu  sync.Mutex
	all []audit.Event
}

func (e *events) Record(_ context.Context, ev audit.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
	return nil
}

func (e *events) last() audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.all[len(e.all)-1]
}

const (
	// openByPath admits any trust domain's /ns/shop/web: the lint warns.
	openByPath = `@id("by-path")
permit (principal, action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`
	openByLabel = `@id("by-label")
permit (principal, action == Action::"connect", resource == Service::"db")
when { principal.labels.contains("team:shop") };
`
	fencedByPath = `@id("by-path-home")
permit (principal in TrustDomain::"td", action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`
	meantForPeers = `@id("peers")
@federated("allow")
permit (principal, action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`
)

// TestStrictFederationLintRefusesOnEveryPolicyPath: with the authority's
// strict lint, a client that skips the CLI's lint (an old CLI, a script on
// the admin API) cannot store a permit open to federated trust domains by
// apply or by rolling back to a version stored before strict was set; the
// refusal names each offending policy and the fixes and stores nothing.
// Revocations still go through over such a current version. In warn mode
// the set is stored and its audit event records the warnings.
func TestStrictFederationLintRefusesOnEveryPolicyPath(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	// Warn mode (the default): stored, warnings audited.
	warnEv := &events{}
	warn := New(st, warnEv, WithTrustDomain("td"))
	v1, err := warn.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(openByPath), "b.cedar": []byte(openByLabel)}, "")
	if err != nil {
		t.Fatalf("warn mode refused a warned set: %v", err)
	}
	ev := warnEv.last()
	if ev.Operation != "policy.apply" || ev.Result != audit.ResultOK || ev.Fields["federation_warnings"] != "2" ||
		!strings.Contains(ev.Fields["federation_warning_policies"], `a.cedar:1:1 (policy "by-path")`) ||
		!strings.Contains(ev.Fields["federation_warning_policies"], `(policy "by-label")`) {
		t.Fatalf("warn mode's audit event lacks the warnings: %+v", ev)
	}
	v2, err := warn.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(fencedByPath)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if f := warnEv.last().Fields; f["federation_warnings"] != "" {
		t.Fatalf("a clean set's event has warnings: %v", f)
	}

	// The same store under strict lint (the authority restarted with it).
	strictEv := &events{}
	strict := New(st, strictEv, WithTrustDomain("td"), WithStrictFederationLint(true))
	refused := func(what string, err error, ids ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: stored under strict lint", what)
		}
		if errs.KindOf(err) != errs.Invalid {
			t.Errorf("%s: kind %v, want Invalid: %v", what, errs.KindOf(err), err)
		}
		for _, want := range append(ids, "policy.federation_lint: strict", "nothing was stored", `principal in TrustDomain::"<your trust domain>"`, `@federated("allow")`) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error lacks %q: %v", what, want, err)
			}
		}
		if cur, _ := strict.Current(ctx); cur != v2.Number {
			t.Fatalf("%s: current moved %d -> %d", what, v2.Number, cur)
		}
		if ev := strictEv.last(); ev.Result != audit.ResultError || !strings.Contains(ev.Error, "federation_lint") {
			t.Errorf("%s: refusal not audited as an error: %+v", what, ev)
		}
	}
	_, err = strict.Apply(ctx, "script", map[string][]byte{"a.cedar": []byte(openByPath), "b.cedar": []byte(openByLabel), "c.cedar": []byte(fencedByPath)}, "")
	refused("apply", err, `a.cedar:1:1 (policy "by-path")`, `b.cedar:1:1 (policy "by-label")`, "2 permit(s)")
	_, err = strict.Rollback(ctx, "script", v1.Number, "")
	refused("rollback to a warned version", err, `(policy "by-path")`, `(policy "by-label")`)

	// What the lint admits.
	if _, err := strict.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(fencedByPath), "p.cedar": []byte(meantForPeers)}, ""); err != nil {
		t.Fatalf("strict refused a fenced and an annotated permit: %v", err)
	}
	if _, err := strict.Rollback(ctx, "admin", v2.Number, ""); err != nil {
		t.Fatalf("strict refused a rollback to a clean version: %v", err)
	}

	// A warned current version (stored before strict, or restored) is
	// reported, and never blocks a revocation.
	if _, err := warn.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(openByPath)}, ""); err != nil {
		t.Fatal(err)
	}
	n, places, err := strict.CurrentFederationWarnings(ctx)
	if err != nil || len(places) != 1 || !strings.Contains(places[0], "by-path") {
		t.Fatalf("current warnings: %d %v %v", n, places, err)
	}
	if _, err := strict.Revoke(ctx, "admin", []string{"spiffe://td/ns/shop/web"}, nil, false, ""); err != nil {
		t.Fatalf("strict lint blocked a revocation over a warned current set: %v", err)
	}
}

// TestCheckStoresNothing: Check runs Apply's checks (compile errors, the
// strict lint's refusal) and reports the warnings without storing a
// version, in either mode.
func TestCheckStoresNothing(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ev := &events{}
	warn, strict := New(st, ev), New(st, ev, WithStrictFederationLint(true))
	open := map[string][]byte{"a.cedar": []byte(openByPath)}
	n, ws, err := warn.Check(ctx, open)
	if err != nil || n != 1 || len(ws) != 1 || !strings.Contains(ws[0], `a.cedar:1:1 (policy "by-path")`) {
		t.Fatalf("warn Check: %d %v %v", n, ws, err)
	}
	if _, _, err := strict.Check(ctx, open); err == nil || errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), `(policy "by-path")`) {
		t.Fatalf("strict Check: %v", err)
	}
	if _, _, err := strict.Check(ctx, map[string][]byte{"bad.cedar": []byte("permit(")}); err == nil || errs.KindOf(err) != errs.Invalid {
		t.Fatalf("Check of a syntax error: %v", err)
	}
	if n, ws, err := strict.Check(ctx, map[string][]byte{"a.cedar": []byte(fencedByPath)}); err != nil || n != 1 || len(ws) != 0 {
		t.Fatalf("strict Check of a clean set: %d %v %v", n, ws, err)
	}
	if cur, _ := warn.Current(context.Background()); cur != 0 || len(ev.all) != 0 {
		t.Fatalf("Check stored version %d or audited %d events", cur, len(ev.all))
	}
}
