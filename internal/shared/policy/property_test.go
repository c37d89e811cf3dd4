package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

var (
	propWorkloads = []string{
		"spiffe://a.example/w1", "spiffe://a.example/w2", "spiffe://a.example/ns/w3",
		"spiffe://b.example/w1", "spiffe://b.example/w4", "spiffe://c.example/w5",
	}
	propTDs       = []string{"a.example", "b.example", "c.example"}
	propGroups    = []string{"g1", "g2", "g3"}
	propServices  = []string{"s1", "s2", "s3"}
	propKeys      = []string{"k1", "k2"}
	propActions   = []string{ActionConnect, ActionKMSEncrypt, ActionKMSDecrypt, ActionKMSDataKey, ActionKMSRewrap}
	propActionAll = append(append([]string{}, propActions...), ActionGroupKMS)
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randomPolicy(r *rand.Rand, i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "@id(\"p%d\")\n", i)
	if r.IntN(5) == 0 {
		b.WriteString("@dryrun(\"true\")\n")
	}
	if r.IntN(3) == 0 {
		b.WriteString("forbid (")
	} else {
		b.WriteString("permit (")
	}
	switch r.IntN(8) {
	case 0:
		b.WriteString("principal")
	case 1, 2:
		fmt.Fprintf(&b, "principal == Workload::%q", pick(r, propWorkloads))
	case 3:
		fmt.Fprintf(&b, "principal in TrustDomain::%q", pick(r, propTDs))
	case 4:
		fmt.Fprintf(&b, "principal in Group::%q", pick(r, propGroups))
	case 5:
		b.WriteString("principal is Workload")
	case 6:
		fmt.Fprintf(&b, "principal is Workload in Group::%q", pick(r, propGroups))
	case 7:
		fmt.Fprintf(&b, "principal in Workload::%q", pick(r, propWorkloads))
	}
	b.WriteString(", ")
	switch r.IntN(4) {
	case 0:
		b.WriteString("action")
	case 1:
		fmt.Fprintf(&b, "action == Action::%q", pick(r, propActionAll))
	case 2:
		fmt.Fprintf(&b, "action in Action::%q", pick(r, propActionAll))
	case 3:
		fmt.Fprintf(&b, "action in [Action::%q, Action::%q]", pick(r, propActionAll), pick(r, propActionAll))
	}
	b.WriteString(", ")
	switch r.IntN(8) {
	case 0:
		b.WriteString("resource")
	case 6: // never met: a Service is not a Key, though filed under Key::k
		fmt.Fprintf(&b, "resource is Service in Key::%q", pick(r, propKeys))
	case 7:
		fmt.Fprintf(&b, "resource == Key::%q", pick(r, propKeys))
	case 1, 2:
		fmt.Fprintf(&b, "resource == Service::%q", pick(r, propServices))
	case 3:
		fmt.Fprintf(&b, "resource in Key::%q", pick(r, propKeys))
	case 4:
		b.WriteString("resource is Service")
	case 5:
		fmt.Fprintf(&b, "resource is Key in Key::%q", pick(r, propKeys))
	}
	b.WriteString(")")
	switch r.IntN(20) {
	case 0:
		b.WriteString(` when { context.tls_version == "1.3" }`)
	case 1:
		b.WriteString(` when { principal.labels.team == "a" }`) // errors when the label is missing
	case 2:
		b.WriteString(` unless { resource.port > 100 }`) // errors on keys
	case 3:
		fmt.Fprintf(&b, ` when { principal in Group::%q }`, pick(r, propGroups))
	case 4:
		b.WriteString(` when { resource.name like "s*" && context.source_trust_domain != "c.example" }`)
	case 5:
		fmt.Fprintf(&b, ` when { action in Action::%q }`, pick(r, propActionAll))
	case 6:
		b.WriteString(` when { context.unix_time >= 1700000000 && !(principal.path like "/ns/*") || principal.trust_domain == "c.example" }`)
	case 7:
		b.WriteString(` unless { resource.classification != "" || context.destination == resource }`)
	// The shapes below also compare the fast path (fast.go) with cedar-go:
	// literal on the left, entity equality and `in` inside conditions,
	// <, <=, long equality, boolean literals, labels with !=, and operands
	// of the wrong type (which must error, not decide).
	case 8:
		fmt.Fprintf(&b, ` when { "1.2" == context.tls_version || principal == Workload::%q }`, pick(r, propWorkloads))
	case 9:
		b.WriteString(` when { resource.port < 50 || resource.port <= 150 && resource.port == 120 }`)
	case 10:
		fmt.Fprintf(&b, ` when { resource in Key::%q || resource == Service::%q }`, pick(r, propKeys), pick(r, propServices))
	case 11:
		fmt.Fprintf(&b, ` unless { principal in TrustDomain::%q && action == Action::%q }`, pick(r, propTDs), pick(r, propActions))
	case 12:
		b.WriteString(` when { principal.labels.team != "b" } unless { context.source_trust_domain == principal.trust_domain }`)
	case 13:
		b.WriteString(` when { true && !false } when { context.unix_time < 1800000000 }`)
	case 14:
		b.WriteString(` when { context.tls_version && true }`) // not a boolean: errors
	case 15:
		b.WriteString(` when { context.tls_version < 2 || resource.name like "k*" }`) // a string compared: errors
	case 16:
		fmt.Fprintf(&b, ` when { principal in Workload::%q || principal.path == "/w1" }`, pick(r, propWorkloads))
	case 17:
		b.WriteString(` unless { context has destination && resource.name == "s2" }`) // not fast: cedar-go decides
	}
	b.WriteString(";\n")
	return b.String()
}

func randomRequest(r *rand.Rand) Request {
	req := Request{
		Principal: pick(r, propWorkloads),
		Action:    pick(r, propActions),
		Context:   Context{TLSVersion: pick(r, []string{"1.2", "1.3"}), Time: t0, SourceTrustDomain: pick(r, propTDs)},
	}
	for _, g := range propGroups {
		if r.IntN(3) == 0 {
			req.Groups = append(req.Groups, g)
		}
	}
	if r.IntN(2) == 0 {
		req.Labels = map[string]string{"team": pick(r, []string{"a", "b"})}
	}
	if r.IntN(2) == 0 {
		req.Resource = Resource{Type: TypeService, Name: pick(r, propServices), Port: r.IntN(200)}
	} else {
		req.Resource = Resource{Type: TypeKey, Name: pick(r, propKeys)}
	}
	return req
}

// TestIndexMatchesUnindexed: for random policy sets and requests, the
// indexed decision equals handing cedar-go every policy.
func TestIndexMatchesUnindexed(t *testing.T) {
	var allowed, forbidden, dry, errs, fast int
	for seed := uint64(0); seed < 150; seed++ {
		r := rand.New(rand.NewPCG(seed, 42))
		var src strings.Builder
		n := 1 + r.IntN(60)
		for i := 0; i < n; i++ {
			src.WriteString(randomPolicy(r, i))
		}
		set, err := Compile(map[string][]byte{"r.cedar": []byte(src.String())})
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src.String())
		}
		for j := 0; j < 150; j++ {
			req := randomRequest(r)
			got := set.Decide(req)
			if q := req; func() bool { _, _, ok := set.fastEvaluate(&q); return ok }() {
				fast++ // decided without cedar-go (fast.go)
			}
			want := set.decide(&req, true)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d request %+v:\nindexed   %+v\nunindexed %+v\npolicies:\n%s", seed, req, got, want, src.String())
			}
			switch {
			case got.Allowed:
				allowed++
			case got.Cause == CauseForbid:
				forbidden++
			}
			if len(got.DryRunDenials)+len(got.DryRunPermits) > 0 {
				dry++
			}
			if len(got.Errors) > 0 {
				errs++
			}
		}
	}
	// The generator must exercise every branch, or the comparison proves little.
	if allowed < 1000 || forbidden < 1000 || dry < 500 || errs < 500 || fast < 5000 {
		t.Fatalf("weak coverage: allowed=%d forbidden=%d dry-run=%d errors=%d fast-path=%d", allowed, forbidden, dry, errs, fast)
	}
	t.Logf("allowed=%d forbidden=%d dry-run=%d with-errors=%d fast-path=%d", allowed, forbidden, dry, errs, fast)
}
