package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// timePolicy is a policy that reads the request time in one of the ways
// Cedar allows; the cache must never answer a request it is a candidate for.
func timePolicy(r *rand.Rand, i int) string {
	scope := pick(r, []string{
		"principal, action, resource",
		fmt.Sprintf("principal == Workload::%q, action, resource", pick(r, propWorkloads)),
		fmt.Sprintf("principal in Group::%q, action, resource", pick(r, propGroups)),
		fmt.Sprintf("principal, action, resource == Service::%q", pick(r, propServices)),
	})
	cond := pick(r, []string{
		fmt.Sprintf(`when { context.unix_time > %d }`, t0.Unix()),
		fmt.Sprintf(`unless { context["unix_time"] <= %d }`, t0.Unix()),
		`when { context.time > datetime("2026-03-01T12:00:00Z") }`,
		`when { context has time && context.tls_version == "1.3" }`,
		`when { context == context }`,
	})
	return fmt.Sprintf("@id(\"t%d\")\n%s (%s) %s;\n", i, pick(r, []string{"permit", "forbid"}), scope, cond)
}

// cachedFor reports whether s's cache holds an entry for req (after the
// principal fill-in that Decide does).
func cachedFor(s *Set, req Request) bool {
	s.fillPrincipal(&req)
	t := s.cache.table.Load()
	if t == nil {
		return false
	}
	k := keyOf(&req)
	first := s.cache.hash(&k) % decisionCacheSlots &^ (decisionCacheWays - 1)
	for i := first; i < first+decisionCacheWays; i++ {
		if e := t[i].Load(); e != nil && e.matches(s, &k, &req) {
			return true
		}
	}
	return false
}

// TestCachedDecisionsMatchUncached is the differential test of the
// decision cache: for random policy sets (with time-dependent policies and
// deny-lists) and random requests asked repeatedly, with varying time,
// labels, groups, context and certificate serials, Decide (cached) gives
// exactly the decision of the uncached path, a time-dependent decision is
// never cached, and other decisions are.
func TestCachedDecisionsMatchUncached(t *testing.T) {
	var hits, timeDependent, denyListed int
	for seed := uint64(0); seed < 120; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		var src strings.Builder
		for i := range 1 + r.IntN(40) {
			src.WriteString(randomPolicy(r, i))
		}
		for i := range r.IntN(4) {
			src.WriteString(timePolicy(r, i))
		}
		b := Bundle{Files: map[string][]byte{"r.cedar": []byte(src.String())}, Version: seed + 1}
		if r.IntN(3) == 0 {
			b.DenyList = DenyList{SPIFFEIDs: []string{pick(r, propWorkloads)}, Serials: []string{"0a:1b"}}
		}
		if r.IntN(2) == 0 { // labels and groups of requests that carry none
			b.Principals = map[string]Principal{}
			for _, w := range propWorkloads[:3] {
				b.Principals[w] = Principal{Labels: map[string]string{"team": pick(r, []string{"a", "b"})}, Groups: []string{pick(r, propGroups)}}
			}
		}
		set, err := CompileBundle(b)
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src.String())
		}
		reqs := make([]Request, 40)
		for i := range reqs {
			reqs[i] = randomRequest(r)
			reqs[i].Context.Destination = pick(r, []string{"", "s1:443", "s2:443"})
			reqs[i].CertSerial = pick(r, []string{"", "", "1f", "A1B", "not-hex"})
		}
		for j := range 400 {
			req := reqs[r.IntN(len(reqs))]
			req.Context.Time = t0.Add(time.Duration(r.IntN(5)-2) * time.Second)
			switch r.IntN(4) {
			case 0: // the same labels and groups in new memory and another order
				req.Labels = maps.Clone(req.Labels)
				req.Groups = slices.Clone(req.Groups)
				slices.Reverse(req.Groups)
			case 1: // none: the bundle's principals fill them in
				req.Labels, req.Groups = nil, nil
			}
			was := cachedFor(set, req)
			got := set.Decide(req)
			ref := req
			want, cacheable := set.evaluate(&ref, false)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d request %d %+v (cached before: %v):\ncached   %+v\nuncached %+v\npolicies:\n%s", seed, j, req, was, got, want, src.String())
			}
			switch {
			case got.Cause == CauseDenyList:
				denyListed++
			case got.Cause == CauseBadRequest:
				// A malformed serial is decided in full; the cache key holds
				// no serial, so the entry of a valid one may exist.
			case !cacheable:
				if cachedFor(set, req) {
					t.Fatalf("seed %d: time-dependent decision %+v for %+v was cached", seed, got, req)
				}
				timeDependent++
			case !cachedFor(set, req):
				t.Fatalf("seed %d: cacheable decision for %+v not cached", seed, req)
			}
			if was {
				hits++
			}
			// A caller changing its decision does not change the cache's.
			if len(got.Reasons) > 0 {
				got.Reasons[0] = "changed"
			}
		}
	}
	if hits < 10000 || timeDependent < 1000 || denyListed < 100 {
		t.Fatalf("weak coverage: hits=%d time-dependent=%d deny-listed=%d", hits, timeDependent, denyListed)
	}
	t.Logf("hits=%d time-dependent=%d deny-listed=%d", hits, timeDependent, denyListed)
}

// TestCacheFollowsVersionAndDenyList: a new version or deny-list is a new
// Set with a cache of its own, so a cached allow never outlives either.
func TestCacheFollowsVersionAndDenyList(t *testing.T) {
	set := compileOne(t, `permit (principal == Workload::"spiffe://a.example/w1", action, resource);`).WithVersion(1)
	req := Request{Principal: "spiffe://a.example/w1", Action: ActionConnect, Resource: Resource{Type: TypeService, Name: "s1", Port: 443}}
	for range 3 {
		if d := set.Decide(req); !d.Allowed || d.Version != 1 {
			t.Fatalf("v1: %+v", d)
		}
	}
	if !cachedFor(set, req) {
		t.Fatal("decision not cached")
	}
	v2 := set.WithVersion(2)
	if d := v2.Decide(req); !d.Allowed || d.Version != 2 {
		t.Fatalf("v2 answered with %+v", d)
	}
	denied, err := v2.WithDenyList(DenyList{SPIFFEIDs: []string{req.Principal}})
	if err != nil {
		t.Fatal(err)
	}
	if d := denied.Decide(req); d.Allowed || d.Cause != CauseDenyList {
		t.Fatalf("deny-listed principal: %+v", d)
	}
	serial, err := v2.WithDenyList(DenyList{Serials: []string{"0A:1B"}})
	if err != nil {
		t.Fatal(err)
	}
	req.CertSerial = "a1b"
	if d := serial.Decide(req); d.Allowed || d.Cause != CauseDenyList {
		t.Fatalf("deny-listed serial: %+v", d)
	}
	req.CertSerial = "zz"
	if d := serial.Decide(req); d.Allowed || d.Cause != CauseBadRequest {
		t.Fatalf("malformed serial: %+v", d)
	}
	// Changing labels or groups is another question.
	set = compileOne(t, `permit (principal, action, resource) when { principal.labels.team == "a" };`)
	req = Request{Principal: "spiffe://a.example/w1", Action: ActionConnect, Resource: Resource{Type: TypeService, Name: "s1", Port: 443},
		Labels: map[string]string{"team": "a"}}
	if d := set.Decide(req); !d.Allowed {
		t.Fatalf("team a: %+v", d)
	}
	req.Labels = map[string]string{"team": "b"}
	if d := set.Decide(req); d.Allowed {
		t.Fatalf("team b answered from the cache of team a: %+v", d)
	}
}

func TestReadsTime(t *testing.T) {
	for _, tc := range []struct {
		cond string
		want bool
	}{
		{`when { context.tls_version == "1.3" }`, false},
		{`when { context has destination && context.source_trust_domain == "a" }`, false},
		{`when { context.unix_time > 5 }`, true},
		{`when { context.time > datetime("2026-03-01T12:00:00Z") }`, true},
		{`when { context has unix_time }`, true},
		{`when { context["unix_time"] > 5 }`, true},
		{`when { context == context }`, true},
		{`when { principal.labels.team == "a" }`, false},
	} {
		s := compileOne(t, `permit (principal, action, resource) `+tc.cond+`;`)
		if got := s.all[0].readsTime; got != tc.want {
			t.Errorf("%s: readsTime %v, want %v", tc.cond, got, tc.want)
		}
	}
}

func compileOne(t *testing.T, src string) *Set {
	t.Helper()
	return mustCompile(t, map[string]string{"p.cedar": src})
}

// TestCacheConcurrentDecisions: goroutines deciding at once on one Set
// (as a proxy's connections do) fill and read the cache safely (run with
// -race) and every one gets the uncached decision.
func TestCacheConcurrentDecisions(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var src strings.Builder
	for i := range 30 {
		src.WriteString(randomPolicy(r, i))
	}
	src.WriteString(timePolicy(r, 0))
	set := mustCompile(t, map[string]string{"r.cedar": src.String()})
	reqs := make([]Request, 64)
	want := make([]Decision, len(reqs))
	for i := range reqs {
		reqs[i] = randomRequest(r)
		q := reqs[i]
		want[i] = set.decide(&q, false)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for j := range 2000 {
				i := (j*7 + g) % len(reqs)
				if got := set.Decide(reqs[i]); !reflect.DeepEqual(got, want[i]) {
					t.Errorf("request %d: %+v, want %+v", i, got, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestCachedAllowNotReusedAfterForbid runs the attack on the decision
// cache through an Engine, as enforcement points hold it: an allow cached
// by version 1 must not answer once version 2 adds a forbid for the
// principal, whether version 2 is compiled afresh or the deny-list of a
// re-labelled Set names it.
func TestCachedAllowNotReusedAfterForbid(t *testing.T) {
	permit := `@id("allow") permit (principal == Workload::"spiffe://a.example/w1", action == Action::"connect", resource == Service::"s1");` + "\n"
	v1, err := CompileBundle(Bundle{Files: map[string][]byte{"p.cedar": []byte(permit)}, Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine()
	e.Store(v1)
	req := Request{Principal: "spiffe://a.example/w1", CertSerial: "1f", Action: ActionConnect,
		Resource: Resource{Type: TypeService, Name: "s1", Port: 443}, Context: Context{TLSVersion: "1.3"}}
	for range 3 {
		if d := e.Decide(req); !d.Allowed || d.Version != 1 {
			t.Fatalf("version 1: %+v", d)
		}
	}
	if !cachedFor(v1, req) {
		t.Fatal("version 1 did not cache the allow; the attack proves nothing")
	}
	v2, err := CompileBundle(Bundle{Files: map[string][]byte{"p.cedar": []byte(permit +
		`@id("block") forbid (principal == Workload::"spiffe://a.example/w1", action, resource);`)}, Version: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !e.StoreIfNewer(v2) {
		t.Fatal("version 2 not stored")
	}
	for range 3 {
		if d := e.Decide(req); d.Allowed || d.Cause != CauseForbid || d.Version != 2 || !slices.Equal(d.Reasons, []string{"block"}) {
			t.Fatalf("version 2 adds a forbid, decided %+v", d)
		}
	}
	// Version 3: the forbid removed, then the deny-list of a re-labelled
	// copy of the same Set names the principal.
	v3 := v1.WithVersion(3)
	e.Store(v3)
	if d := e.Decide(req); !d.Allowed || d.Version != 3 {
		t.Fatalf("version 3: %+v", d)
	}
	v4, err := v3.WithDenyList(DenyList{SPIFFEIDs: []string{req.Principal}})
	if err != nil {
		t.Fatal(err)
	}
	e.Store(v4.WithVersion(4))
	if d := e.Decide(req); d.Allowed || d.Cause != CauseDenyList || d.Version != 4 {
		t.Fatalf("version 4 deny-lists the principal, decided %+v", d)
	}
}

// TestCacheKeepsNoHugeKeys: requests naming made-up resources of a
// megabyte each (a caller's strings) are decided, identically, but not
// kept by the cache; ordinary ones still are.
func TestCacheKeepsNoHugeKeys(t *testing.T) {
	s := compileOne(t, `permit (principal, action, resource);`)
	for i := range 4 {
		req := Request{Principal: "spiffe://a.example/w1", Action: ActionKMSEncrypt,
			Resource: Resource{Type: TypeKey, Name: strings.Repeat(string(rune('a'+i)), 1<<20)}}
		if d := s.Decide(req); !d.Allowed || !reflect.DeepEqual(d, s.decide(&req, true)) {
			t.Fatalf("decision %+v", d)
		}
		if cachedFor(s, req) {
			t.Fatal("a 1 MiB resource name was cached")
		}
	}
	req := Request{Principal: "spiffe://a.example/w1", Action: ActionKMSEncrypt, Resource: Resource{Type: TypeKey, Name: "k1"}}
	s.Decide(req)
	if !cachedFor(s, req) {
		t.Fatal("an ordinary request was not cached")
	}
}
