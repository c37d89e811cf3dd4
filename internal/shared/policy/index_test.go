package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// guardPolicy is a policy whose first condition starts with
// `attr == "literal"` (what the index groups by), followed by conjuncts
// and conditions that may match, not match, read the time or fail.
func guardPolicy(r *rand.Rand, i int) string {
	attr := pick(r, []string{"context.tls_version", "context.tls_version", "context.tls_version", "resource.name", "context.source_trust_domain", "context.destination",
		"resource.name", "resource.classification", "principal.trust_domain", "principal.path"})
	lit := pick(r, map[string][]string{
		"context.tls_version":         {"1.2", "1.3", "1.0"},
		"context.source_trust_domain": propTDs,
		"context.destination":         {"", "s1:443", "s2:443"},
		"resource.name":               append(append([]string{}, propServices...), propKeys...),
		"resource.classification":     {"", "secret"},
		"principal.trust_domain":      propTDs,
		"principal.path":              {"/w1", "/w2", "/ns/w3"},
	}[attr])
	guard := fmt.Sprintf("%s == %q", attr, lit)
	if r.IntN(4) == 0 {
		guard = fmt.Sprintf("%q == %s", lit, attr) // the literal on the left is the same guard
	}
	rest := pick(r, []string{
		"",
		` && resource.name like "s*"`,
		` && principal.labels.team == "a"`, // errors when the label is missing
		` && resource.port > 100`,          // errors on keys
		fmt.Sprintf(` && context.unix_time > %d`, t0.Unix()-1),
		` && context.tls_version == "1.3" || resource.name == "k1"`,
	})
	more := pick(r, []string{"", "", ` unless { context.destination == "s2:443" }`, ` when { principal.labels.team != "b" }`})
	scope := pick(r, []string{
		"principal, action, resource",
		"principal, action, resource",
		"principal, action, resource",
		fmt.Sprintf("principal in TrustDomain::%q, action, resource", pick(r, propTDs)),
		fmt.Sprintf("principal, action, resource == Service::%q", pick(r, propServices)),
		fmt.Sprintf("principal in Group::%q, action in Action::%q, resource", pick(r, propGroups), pick(r, propActionAll)),
		"principal is Workload, action, resource is Key",
	})
	effect := pick(r, []string{"permit", "permit", "permit", "forbid"})
	dry := ""
	if r.IntN(6) == 0 {
		dry = "@dryrun(\"true\")\n"
	}
	// An unless whose condition starts the same way is no guard (the
	// policy applies when it is false): never skipped by the index.
	first := "when"
	if r.IntN(5) == 0 {
		first = "unless"
	}
	return fmt.Sprintf("@id(\"g%d\")\n%s%s (%s) %s { %s%s }%s;\n", i, dry, effect, scope, first, guard, rest, more)
}

// TestGuardsMatchUnindexed: sets with many guarded policies (grouped by
// the index under their attribute and literal, index.go) decide exactly as
// cedar-go handed every policy, cached or not, and the guards are used.
func TestGuardsMatchUnindexed(t *testing.T) {
	var guarded, fast, allowed, forbidden int
	for seed := uint64(0); seed < 80; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		var src strings.Builder
		for i := range 25 + r.IntN(60) {
			if r.IntN(4) == 0 {
				src.WriteString(randomPolicy(r, i))
			} else {
				src.WriteString(guardPolicy(r, i))
			}
		}
		set, err := Compile(map[string][]byte{"g.cedar": []byte(src.String())})
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src.String())
		}
		lists := 0
		forLists(set.ix, func(l *plist) {
			if len(l.guards) > 0 {
				lists++
			}
		})
		if lists > 0 {
			guarded++
		}
		for range 150 {
			req := randomRequest(r)
			req.Context.Destination = pick(r, []string{"", "s1:443", "s2:443"})
			req.Resource.Classification = pick(r, []string{"", "secret"})
			q := req
			if _, _, ok := set.fastEvaluate(&q); ok {
				fast++
			}
			want := set.decide(&req, true)
			for _, got := range []Decision{set.decide(&req, false), set.Decide(req), set.Decide(req)} {
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("seed %d request %+v:\nindexed   %+v\nunindexed %+v\npolicies:\n%s", seed, req, got, want, src.String())
				}
			}
			switch {
			case want.Allowed:
				allowed++
			case want.Cause == CauseForbid:
				forbidden++
			}
		}
	}
	if guarded < 60 || fast < 3000 || allowed < 1000 || forbidden < 1000 {
		t.Fatalf("weak coverage: sets with guards=%d fast-path=%d allowed=%d forbidden=%d", guarded, fast, allowed, forbidden)
	}
	t.Logf("sets with guards=%d fast-path=%d allowed=%d forbidden=%d", guarded, fast, allowed, forbidden)
}

// forLists calls f on every list of ix.
func forLists(ix *index, f func(*plist)) {
	each := func(b *bucket) {
		f(&b.any)
		for i := range b.byRes {
			f(&b.byRes[i])
		}
	}
	for _, m := range []map[string]*bucket{ix.workloads, ix.tds, ix.groups} {
		for _, b := range m {
			each(b)
		}
	}
	each(&ix.anyPrincipal)
}

// TestDuplicateGroupsDecideOnce: a group named twice in a request is one
// parent: its policies count once, on the fast path and through cedar-go.
func TestDuplicateGroupsDecideOnce(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want []string
	}{
		{`@id("g") permit (principal in Group::"g1", action, resource);`, []string{"g"}}, // fast path
		{`@id("g") permit (principal in Group::"g1", action, resource);
@id("h") permit (principal in Group::"g1", action, resource) when { context has destination };`, []string{"g", "h"}}, // cedar-go
	} {
		set := mustCompile(t, map[string]string{"p.cedar": tc.src})
		req := Request{Principal: "spiffe://a.example/w1", Groups: []string{"g1", "g1"}, Action: ActionConnect,
			Resource: Resource{Type: TypeService, Name: "s1", Port: 443}, Context: Context{Time: t0}}
		want := set.decide(&req, true)
		if !want.Allowed || !reflect.DeepEqual(want.Reasons, tc.want) {
			t.Fatalf("unindexed: %+v", want)
		}
		for _, got := range []Decision{set.decide(&req, false), set.Decide(req)} {
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("indexed %+v, want %+v", got, want)
			}
		}
	}
}
