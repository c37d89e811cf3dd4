package policy

import "testing"

func TestBundlePrincipalsFillLabels(t *testing.T) {
	b := Bundle{Version: 3, Files: map[string][]byte{"p.cedar": []byte(`@id("label-permit")
permit(principal, action == Action::"connect", resource == Service::"db") when { principal has labels && principal.labels has app && principal.labels.app == "payments" };`)},
		Principals: map[string]Principal{"spiffe://td/pay": {Labels: map[string]string{"app": "payments"}}}}
	set, err := CompileBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	req := func(p string, labels map[string]string) Request {
		return Request{Principal: p, Labels: labels, Action: ActionConnect, Resource: Resource{Type: TypeService, Name: "db"}}
	}
	cases := []struct {
		name   string
		r      Request
		allows bool
	}{
		{"labels from the bundle", req("spiffe://td/pay", nil), true},
		{"unknown principal has none", req("spiffe://td/other", nil), false},
		{"labels given by the caller win", req("spiffe://td/pay", map[string]string{"app": "batch"}), false},
	}
	for _, c := range cases {
		if got := set.Decide(c.r).Allowed; got != c.allows {
			t.Errorf("%s: allowed=%v, want %v", c.name, got, c.allows)
		}
		if got := set.Explain(c.r).Decision.Allowed; got != c.allows {
			t.Errorf("%s (explain): allowed=%v, want %v", c.name, got, c.allows)
		}
	}
	b.Principals = map[string]Principal{"not-a-spiffe-id": {}}
	if _, err := CompileBundle(b); err == nil {
		t.Fatal("a bundle with a bad principal ID compiled")
	}
	// The JSON form round-trips.
	j, _ := MarshalBundle(Bundle{Version: 1, Principals: map[string]Principal{"spiffe://td/a": {Labels: map[string]string{"k": "v"}, Groups: []string{"g"}}}})
	back, err := ParseBundle(j)
	if err != nil || back.Principals["spiffe://td/a"].Labels["k"] != "v" || back.Principals["spiffe://td/a"].Groups[0] != "g" {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

// TestErroringForbidDenies: a forbid that cannot be evaluated for a request
// (it reads a label the principal lacks) denies instead of being skipped.
func TestErroringForbidDenies(t *testing.T) {
	set := mustCompile(t, map[string]string{"p.cedar": `@id("all-to-db")
permit(principal, action == Action::"connect", resource == Service::"db");
@id("no-untrusted")
forbid(principal, action, resource) when { principal.labels.trust == "low" };
@id("canary")
@dryrun("true")
forbid(principal, action, resource) when { principal.labels.zone == "x" };`})
	cases := []struct {
		name    string
		labels  map[string]string
		allowed bool
		reasons []string
	}{
		{"label present, forbid does not match", map[string]string{"trust": "high"}, true, []string{"all-to-db"}},
		{"label present, forbid matches", map[string]string{"trust": "low"}, false, []string{"no-untrusted"}},
		{"label missing: forbid errors and denies", map[string]string{}, false, []string{"no-untrusted"}},
	}
	for _, c := range cases {
		d := set.Decide(Request{Principal: "spiffe://td/a", Labels: c.labels, Action: ActionConnect, Resource: Resource{Type: TypeService, Name: "db"}})
		if d.Allowed != c.allowed || len(d.Reasons) != len(c.reasons) || d.Reasons[0] != c.reasons[0] {
			t.Errorf("%s: %+v", c.name, d)
		}
	}
}
