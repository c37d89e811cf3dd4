package policy

import (
	"strings"
	"testing"
)

// TestFederationWarnings: which permits are reported as admitting
// federated workloads with the same path or labels.
func TestFederationWarnings(t *testing.T) {
	const act = `action == Action::"connect", resource == Service::"api"`
	cases := []struct {
		name string
		src  string
		warn bool
	}{
		// Scopes.
		{"scope all, no condition", `permit (principal, ` + act + `);`, true},
		{"scope is Workload", `permit (principal is Workload, ` + act + `);`, true},
		{"scope == workload", `permit (principal == Workload::"spiffe://prod.example/ns/shop/web", ` + act + `);`, false},
		{"scope in trust domain", `permit (principal in TrustDomain::"prod.example", ` + act + `);`, false},
		{"scope is in trust domain", `permit (principal is Workload in TrustDomain::"prod.example", ` + act + `);`, false},
		{"scope in group", `permit (principal in Group::"shop", ` + act + `);`, true},
		// Path and labels alone.
		{"path only", `permit (principal, ` + act + `) when { principal.path == "/ns/shop/web" };`, true},
		{"path like", `permit (principal, ` + act + `) when { principal.path like "/ns/shop/*" };`, true},
		{"labels only", `permit (principal, ` + act + `) when { principal.labels has team && principal.labels.team == "shop" };`, true},
		// Trust domain conditions.
		{"td ==", `permit (principal, ` + act + `) when { principal.path == "/ns/shop/web" && principal.trust_domain == "prod.example" };`, false},
		{"td == reversed", `permit (principal, ` + act + `) when { "prod.example" == principal.trust_domain };`, false},
		{"source td ==", `permit (principal, ` + act + `) when { context.source_trust_domain == "prod.example" && principal.path == "/x" };`, false},
		{"td in condition", `permit (principal, ` + act + `) when { principal in TrustDomain::"prod.example" };`, false},
		{"principal == in condition", `permit (principal, ` + act + `) when { principal == Workload::"spiffe://prod.example/ns/a" };`, false},
		{"principal in set of tds", `permit (principal, ` + act + `) when { principal in [TrustDomain::"a.example", TrustDomain::"b.example"] };`, false},
		{"principal in set with a group", `permit (principal, ` + act + `) when { principal in [TrustDomain::"a.example", Group::"g"] };`, true},
		{"contains", `permit (principal, ` + act + `) when { ["a.example", "b.example"].contains(principal.trust_domain) };`, false},
		{"contains non-literal", `permit (principal, ` + act + `) when { [principal.path].contains(principal.trust_domain) };`, true},
		{"td like exact", `permit (principal, ` + act + `) when { principal.trust_domain like "prod.example" };`, false},
		{"td like wildcard", `permit (principal, ` + act + `) when { principal.trust_domain like "prod*" };`, true},
		{"td != only", `permit (principal, ` + act + `) when { principal.trust_domain != "evil.example" };`, true},
		{"td compared to attribute", `permit (principal, ` + act + `) when { principal.trust_domain == context.source_trust_domain };`, true},
		{"has guard only", `permit (principal, ` + act + `) when { principal has trust_domain && principal.path == "/x" };`, true},
		// || : every branch must constrain.
		{"or one branch", `permit (principal, ` + act + `) when { principal.trust_domain == "prod.example" || principal.path == "/x" };`, true},
		{"or both branches", `permit (principal, ` + act + `) when { principal.trust_domain == "a.example" || principal in TrustDomain::"b.example" };`, false},
		{"and with or", `permit (principal, ` + act + `) when { (principal.path == "/x" || principal.path == "/y") && principal.trust_domain == "a.example" };`, false},
		// ! and unless.
		{"not not", `permit (principal, ` + act + `) when { !(principal.trust_domain != "prod.example") };`, false},
		{"not ==", `permit (principal, ` + act + `) when { !(principal.trust_domain == "prod.example") };`, true},
		{"unless td !=", `permit (principal, ` + act + `) unless { principal.trust_domain != "prod.example" };`, false},
		{"unless td ==", `permit (principal, ` + act + `) unless { principal.trust_domain == "evil.example" };`, true},
		{"unless or", `permit (principal, ` + act + `) unless { principal.path == "/x" || principal.trust_domain != "prod.example" };`, false},
		{"unless and", `permit (principal, ` + act + `) unless { principal.path == "/x" && principal.trust_domain != "prod.example" };`, true},
		{"when path unless td", `permit (principal, ` + act + `) when { principal.path == "/x" } unless { !(principal in TrustDomain::"prod.example") };`, false},
		// if-then-else.
		{"ite both branches", `permit (principal, ` + act + `) when { if principal.path == "/x" then principal.trust_domain == "a.example" else principal.trust_domain == "b.example" };`, false},
		{"ite else open", `permit (principal, ` + act + `) when { if principal.path == "/x" then principal.trust_domain == "a.example" else true };`, true},
		{"ite else false", `permit (principal, ` + act + `) when { if principal.path == "/x" then principal.trust_domain == "a.example" else false };`, false},
		{"ite condition constrains", `permit (principal, ` + act + `) when { if principal.trust_domain == "a.example" then principal.path == "/x" else false };`, false},
		{"ite condition only in then", `permit (principal, ` + act + `) when { if principal.trust_domain == "a.example" then principal.path == "/x" else principal.path == "/y" };`, true},
		// Annotations.
		{"annotated federated", `@federated("allow") permit (principal, ` + act + `) when { principal.path == "/ns/shop/web" };`, false},
		{"other annotation only", `@id("x") @dryrun("true") permit (principal, ` + act + `) when { principal.path == "/ns/shop/web" };`, true},
		// Forbids are never reported.
		{"broad forbid", `forbid (principal, ` + act + `) when { principal.path == "/x" };`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := mustCompile(t, map[string]string{"p.cedar": "\n" + tc.src})
			ws := s.Warnings()
			if got := len(ws) > 0; got != tc.warn {
				t.Fatalf("warn = %v, want %v (%v)", got, tc.warn, ws)
			}
			if tc.warn {
				w := ws[0]
				if w.File != "p.cedar" || w.Line != 2 || w.Column == 0 || w.Kind != KindFederation || !w.Warning || w.Policy == "" {
					t.Fatalf("warning not located: %+v", w)
				}
				str := w.String()
				for _, want := range []string{"p.cedar:2:", "federation warning", "TrustDomain::", `@federated("allow")`} {
					if !strings.Contains(str, want) {
						t.Errorf("%q does not contain %q", str, want)
					}
				}
			}
		})
	}
}

func TestFederationWarningNamesPolicy(t *testing.T) {
	s := mustCompile(t, map[string]string{"a.cedar": `
@id("ok")
permit (principal in TrustDomain::"prod.example", action, resource);

@id("by-path")
permit (principal, action, resource) when { principal.path == "/ns/shop/web" };
`})
	ws := s.Warnings()
	if len(ws) != 1 || ws[0].Policy != "by-path" || ws[0].Line != 5 || ws[0].Column != 1 {
		t.Fatalf("warnings = %+v", ws)
	}
	if c, _ := s.WithDenyList(DenyList{}); len(c.Warnings()) != 1 {
		t.Fatalf("WithDenyList dropped the warnings")
	}
}

func TestFederatedAnnotationValue(t *testing.T) {
	_, err := Compile(map[string][]byte{"a.cedar": []byte(`@federated("yes") permit (principal, action, resource);`)})
	if err == nil || !strings.Contains(err.Error(), `@federated("yes")`) {
		t.Fatalf("err = %v", err)
	}
}

// TestFederationAttack runs the attack the warning is about: a federated
// trust domain registers the same path as a local workload. The permit that
// matches by path alone admits it; the one constrained to the local trust
// domain does not.
func TestFederationAttack(t *testing.T) {
	const local = "spiffe://prod.example/ns/shop/web"
	const peer = "spiffe://peer.example/ns/shop/web"
	open := mustCompile(t, map[string]string{"p.cedar": `
@id("by-path")
permit (principal, action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };`})
	fenced := mustCompile(t, map[string]string{"p.cedar": `
@id("by-path-home")
permit (principal in TrustDomain::"prod.example", action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };`})
	if len(open.Warnings()) != 1 || len(fenced.Warnings()) != 0 {
		t.Fatalf("warnings: open %v, fenced %v", open.Warnings(), fenced.Warnings())
	}
	for _, s := range []*Set{open, fenced} {
		if d := s.Decide(connect(local, "api")); !d.Allowed {
			t.Fatalf("local caller denied: %+v", d)
		}
	}
	peerReq := with(connect(peer, "api"), func(r *Request) { r.Context.SourceTrustDomain = "peer.example" })
	if d := open.Decide(peerReq); !d.Allowed {
		t.Fatalf("the unconstrained permit should admit the peer (that is the attack): %+v", d)
	}
	if d := fenced.Decide(peerReq); d.Allowed {
		t.Fatalf("the constrained permit admitted the federated workload: %+v", d)
	}
}

// TestFederationCheckNestedIf: `if` nested in the condition of `if` makes
// the walk revisit conditions; the budget keeps it linear and the answer
// conservative (a warning).
func TestFederationCheckNestedIf(t *testing.T) {
	cond := `principal.path == "/x"`
	for range 60 {
		cond = "if (" + cond + ") then principal.path == \"/y\" else principal.path == \"/z\""
	}
	s := mustCompile(t, map[string]string{"p.cedar": `permit (principal, action, resource) when { ` + cond + ` };`})
	if len(s.Warnings()) != 1 {
		t.Fatalf("warnings = %v", s.Warnings())
	}
}
