package policy

import (
	"errors"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	web    = "spiffe://prod.example/ns/shop/web"
	api    = "spiffe://prod.example/ns/shop/api"
	batch  = "spiffe://dev.example/ns/etl/batch"
	intern = "spiffe://prod.example/ns/ops/tool"
)

func connect(principal, service string) Request {
	return Request{
		Principal: principal,
		Action:    ActionConnect,
		Resource:  Resource{Type: TypeService, Name: service, Port: 8443, Classification: "internal"},
		Context:   Context{TLSVersion: "1.3", Time: t0, Destination: service + ":8443"},
	}
}

func kms(principal, action, key string) Request {
	return Request{
		Principal: principal,
		Action:    action,
		Resource:  Resource{Type: TypeKey, Name: key, Classification: "confidential"},
		Context:   Context{TLSVersion: "1.3", Time: t0},
	}
}

func with(r Request, f func(*Request)) Request { f(&r); return r }

func mustCompile(t testing.TB, files map[string]string) *Set {
	t.Helper()
	in := map[string][]byte{}
	for k, v := range files {
		in[k] = []byte(v)
	}
	s, err := Compile(in)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

const shopPolicy = `
@id("web-to-api")
permit (principal == Workload::"spiffe://prod.example/ns/shop/web", action == Action::"connect", resource == Service::"api");

@id("prod-to-db")
permit (principal in TrustDomain::"prod.example", action == Action::"connect", resource == Service::"db")
when { context.tls_version == "1.3" };

@id("no-ops-to-db")
forbid (principal, action, resource == Service::"db")
when { principal.path like "/ns/ops/*" };

@id("payments-kms")
permit (principal in Group::"payments", action in Action::"kms:*", resource == Key::"tenant-a/payments");

@id("no-rewrap-at-night")
forbid (principal, action == Action::"kms:rewrap", resource is Key)
when { context.unix_time < 1772370000 };

@id("labelled")
permit (principal, action == Action::"connect", resource == Service::"metrics")
when { principal.labels.team == "sre" };

@id("canary-deny-dev")
@dryrun("true")
forbid (principal, action, resource == Service::"api")
unless { context.source_trust_domain == "prod.example" };

@id("canary-allow-batch")
@dryrun("true")
permit (principal == Workload::"spiffe://dev.example/ns/etl/batch", action, resource == Service::"api");

@id("big-ports")
permit (principal in TrustDomain::"prod.example", action == Action::"connect", resource is Service)
when { resource.port > 60000 && context.time > datetime("2026-01-01T00:00:00Z") };
`

func TestDecide(t *testing.T) {
	set := mustCompile(t, map[string]string{"shop.cedar": shopPolicy})
	tests := []struct {
		name      string
		req       Request
		allowed   bool
		cause     Cause
		reasons   []string
		dryDenies []string
		dryPerms  []string
		errPolicy []string
	}{
		{name: "exact permit", req: connect(web, "api"), allowed: true, cause: CausePermit, reasons: []string{"web-to-api"}},
		{name: "default deny: no policy for this pair", req: connect(api, "web"), cause: CauseDefaultDeny},
		{name: "permit by trust domain group", req: connect(api, "db"), allowed: true, cause: CausePermit, reasons: []string{"prod-to-db"}},
		{name: "context condition fails", req: with(connect(api, "db"), func(r *Request) { r.Context.TLSVersion = "1.2" }), cause: CauseDefaultDeny},
		{name: "forbid overrides permit", req: connect(intern, "db"), cause: CauseForbid, reasons: []string{"no-ops-to-db"}},
		{name: "other trust domain not in group", req: connect(batch, "db"), cause: CauseDefaultDeny},
		{name: "kms action group", req: with(kms(batch, ActionKMSDecrypt, "tenant-a/payments"), func(r *Request) { r.Groups = []string{"payments"} }), allowed: true, cause: CausePermit, reasons: []string{"payments-kms"}},
		{name: "kms group does not cover connect", req: with(connect(batch, "tenant-a/payments"), func(r *Request) { r.Groups = []string{"payments"} }), cause: CauseDefaultDeny},
		{name: "kms without group", req: kms(batch, ActionKMSDecrypt, "tenant-a/payments"), cause: CauseDefaultDeny},
		{name: "kms forbid by time", req: with(kms(batch, ActionKMSRewrap, "tenant-a/payments"), func(r *Request) { r.Groups = []string{"payments"} }), cause: CauseForbid, reasons: []string{"no-rewrap-at-night"}},
		{name: "kms time after forbid window", req: with(kms(batch, ActionKMSRewrap, "tenant-a/payments"), func(r *Request) {
			r.Groups = []string{"payments"}
			r.Context.Time = t0.Add(time.Hour)
		}), allowed: true, cause: CausePermit, reasons: []string{"payments-kms"}},
		{name: "label permit", req: with(connect(batch, "metrics"), func(r *Request) { r.Labels = map[string]string{"team": "sre"} }), allowed: true, cause: CausePermit, reasons: []string{"labelled"}},
		{name: "missing label is an evaluation error, not a match", req: connect(batch, "metrics"), cause: CauseDefaultDeny, errPolicy: []string{"labelled"}},
		{name: "dry-run forbid never blocks but is reported", req: with(connect(web, "api"), func(r *Request) { r.Context.SourceTrustDomain = "dev.example" }),
			allowed: true, cause: CausePermit, reasons: []string{"web-to-api"}, dryDenies: []string{"canary-deny-dev"}},
		{name: "dry-run permit never grants but is reported", req: with(connect(batch, "api"), func(r *Request) { r.Context.SourceTrustDomain = "prod.example" }),
			cause: CauseDefaultDeny, dryPerms: []string{"canary-allow-batch"}},
		{name: "dry-run permit shadowed by dry-run forbid", req: connect(batch, "api"), cause: CauseDefaultDeny},
		{name: "resource attribute condition", req: with(connect(api, "anything"), func(r *Request) { r.Resource.Port = 61000 }), allowed: true, cause: CausePermit, reasons: []string{"big-ports"}},
		{name: "same service, other port: no cached attribute reuse", req: with(connect(api, "anything"), func(r *Request) { r.Resource.Port = 600 }), cause: CauseDefaultDeny},
		{name: "bad principal", req: connect("https://prod.example/web", "api"), cause: CauseBadRequest, reasons: []string{ReasonBadRequest}, errPolicy: []string{""}},
		{name: "unknown action", req: with(connect(web, "api"), func(r *Request) { r.Action = "kms:sing" }), cause: CauseBadRequest, reasons: []string{ReasonBadRequest}, errPolicy: []string{""}},
		{name: "unknown resource type", req: with(connect(web, "api"), func(r *Request) { r.Resource.Type = "Bucket" }), cause: CauseBadRequest, reasons: []string{ReasonBadRequest}, errPolicy: []string{""}},
		{name: "bad serial", req: with(connect(web, "api"), func(r *Request) { r.CertSerial = "xyz" }), cause: CauseBadRequest, reasons: []string{ReasonBadRequest}, errPolicy: []string{""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := set.Decide(tc.req)
			if d.Allowed != tc.allowed || d.Cause != tc.cause {
				t.Fatalf("got allowed=%v cause=%v, want %v %v (decision %+v)", d.Allowed, d.Cause, tc.allowed, tc.cause, d)
			}
			if !slices.Equal(d.Reasons, tc.reasons) {
				t.Errorf("reasons %q, want %q", d.Reasons, tc.reasons)
			}
			if !slices.Equal(d.DryRunDenials, tc.dryDenies) {
				t.Errorf("dry-run denials %q, want %q", d.DryRunDenials, tc.dryDenies)
			}
			if !slices.Equal(d.DryRunPermits, tc.dryPerms) {
				t.Errorf("dry-run permits %q, want %q", d.DryRunPermits, tc.dryPerms)
			}
			var ep []string
			for _, e := range d.Errors {
				ep = append(ep, e.Policy)
				if e.Message == "" {
					t.Errorf("error without message: %+v", e)
				}
			}
			if !slices.Equal(ep, tc.errPolicy) {
				t.Errorf("errors %+v, want policies %q", d.Errors, tc.errPolicy)
			}
		})
	}
}

func TestDenyList(t *testing.T) {
	base := mustCompile(t, map[string]string{"p.cedar": `@id("all") permit(principal, action, resource);`})
	set, err := base.WithDenyList(DenyList{SPIFFEIDs: []string{api}, Serials: []string{"0A:1B:FF"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     Request
		allowed bool
		reason  string
	}{
		{"not listed", connect(web, "x"), true, "all"},
		{"listed SPIFFE ID", connect(api, "x"), false, ReasonDenyListID},
		{"listed serial, other form", with(connect(web, "x"), func(r *Request) { r.CertSerial = "a1bff" }), false, ReasonDenyListSerial},
		{"listed serial via SerialHex", with(connect(web, "x"), func(r *Request) { r.CertSerial = SerialHex(big.NewInt(0xa1bff)) }), false, ReasonDenyListSerial},
		{"other serial", with(connect(web, "x"), func(r *Request) { r.CertSerial = "a1bfe" }), true, "all"},
		{"deny-list wins before request validation", with(connect(api, "x"), func(r *Request) { r.Action = "nope" }), false, ReasonDenyListID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := set.Decide(tc.req)
			if d.Allowed != tc.allowed || len(d.Reasons) != 1 || d.Reasons[0] != tc.reason {
				t.Fatalf("got %+v, want allowed=%v reason %q", d, tc.allowed, tc.reason)
			}
			if !tc.allowed && tc.reason != "all" && d.Cause != CauseDenyList {
				t.Errorf("cause %v, want deny-list", d.Cause)
			}
		})
	}
	if base.Decide(connect(api, "x")).Allowed != true {
		t.Error("WithDenyList changed the original set")
	}
	if _, err := base.WithDenyList(DenyList{Serials: []string{"12", "zz"}}); err == nil || !strings.Contains(err.Error(), `"zz" is not hex`) {
		t.Errorf("invalid serial: err = %v", err)
	}
	if _, err := base.WithDenyList(DenyList{SPIFFEIDs: []string{"spiffe://UPPER/x"}}); err == nil {
		t.Error("invalid SPIFFE ID accepted in deny-list")
	}
	if got := set.DenyList(); !reflect.DeepEqual(got, DenyList{SPIFFEIDs: []string{api}, Serials: []string{"a1bff"}}) {
		t.Errorf("canonical deny-list %+v", got)
	}
}

func TestEngineFailsClosed(t *testing.T) {
	e := NewEngine()
	d := e.Decide(connect(web, "api"))
	if d.Allowed || d.Cause != CauseNoPolicy || !slices.Equal(d.Reasons, []string{ReasonNoPolicy}) {
		t.Fatalf("empty engine: %+v", d)
	}
	if _, ok := e.Status(); ok {
		t.Fatal("empty engine reports a loaded set")
	}
	if x := e.Explain(connect(web, "api")); x.Decision.Allowed || x.Decision.Cause != CauseNoPolicy {
		t.Fatalf("empty engine explain: %+v", x)
	}
	s1 := mustCompile(t, map[string]string{"a.cedar": shopPolicy}).WithVersion(1)
	if !e.StoreIfNewer(s1) {
		t.Fatal("first set refused")
	}
	if d := e.Decide(connect(web, "api")); !d.Allowed || d.Version != 1 {
		t.Fatalf("after store: %+v", d)
	}
	s0 := mustCompile(t, map[string]string{"a.cedar": ""})
	if e.StoreIfNewer(s0) || e.StoreIfNewer(s1.WithVersion(1)) {
		t.Fatal("older or equal version replaced the current set")
	}
	if e.StoreIfNewer(nil) {
		t.Fatal("nil stored by StoreIfNewer")
	}
	if v, ok := e.Status(); !ok || v != 1 {
		t.Fatalf("status %d %v", v, ok)
	}
	if !e.StoreIfNewer(s0.WithVersion(2)) {
		t.Fatal("newer version refused")
	}
	if d := e.Decide(connect(web, "api")); d.Allowed || d.Cause != CauseDefaultDeny || d.Version != 2 {
		t.Fatalf("empty policy set must default-deny: %+v", d)
	}
	e.Store(nil)
	if d := e.Decide(connect(web, "api")); d.Allowed || d.Cause != CauseNoPolicy {
		t.Fatalf("after Store(nil): %+v", d)
	}
}

func TestEngineConcurrentSwap(t *testing.T) {
	e := NewEngine()
	a := mustCompile(t, map[string]string{"a.cedar": `permit(principal, action, resource);`})
	b := mustCompile(t, map[string]string{"b.cedar": `forbid(principal, action, resource);`})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			if i%2 == 0 {
				e.Store(a)
			} else {
				e.Store(b)
			}
		}
		e.Store(nil)
	}()
	for {
		select {
		case <-done:
			if e.Decide(connect(web, "api")).Allowed {
				t.Fatal("allowed after Store(nil)")
			}
			return
		default:
			d := e.Decide(connect(web, "api"))
			switch d.Cause {
			case CausePermit, CauseForbid, CauseNoPolicy:
			default:
				t.Fatalf("torn decision %+v", d)
			}
		}
	}
}

func TestSyntaxErrorPositions(t *testing.T) {
	tests := []struct {
		name      string
		src       string
		line, col int
		msg       string
	}{
		{"missing comma", "permit(principal, action, resource);\n\n  permit(principal == Workload::\"spiffe://a/b\" action, resource);", 3, 48, `unexpected "action", expected ","`},
		{"missing operand", "permit(principal, action, resource)\nwhen { context.tls_version == };", 2, 31, "expected an expression"},
		{"missing semicolon at end", "permit(principal, action, resource)", 1, 36, `unexpected end of input, expected ";"`},
		{"unterminated string", "permit(principal, action, resource)\n  when { context.destination == \"abc };", 2, 33, "literal not terminated"},
		{"bad effect", "\n\nallow(principal, action, resource);", 3, 1, `unexpected "allow", expected permit or forbid`},
		{"number too large", "permit(principal, action, resource)\nwhen { context.unix_time > 99999999999999999999 };", 2, 28, "does not fit in 64 bits"},
		{"too deep", "permit(principal, action, resource) when {" + strings.Repeat("(", 200) + "true" + strings.Repeat(")", 200) + "};", 1, 170, "nest deeper"},
		{"too many unary", "permit(principal, action, resource) when {" + strings.Repeat("!", 100) + "true};", 1, 75, "consecutive"},
		{"if chain", "permit(principal, action, resource) when {" + strings.Repeat("if true then ", 200) + "true" + strings.Repeat(" else false", 200) + "};", 1, 0, "counting `if`"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(map[string][]byte{"ok.cedar": []byte(`permit(principal, action, resource);`), "bad.cedar": []byte(tc.src)})
			var ce *CompileError
			if !errors.As(err, &ce) || len(ce.Problems) != 1 {
				t.Fatalf("err = %v, want one problem", err)
			}
			p := ce.Problems[0]
			if p.File != "bad.cedar" || p.Line != tc.line || (tc.col != 0 && p.Column != tc.col) || !strings.Contains(p.Message, tc.msg) {
				t.Fatalf("problem %+v, want bad.cedar:%d:%d %q", p, tc.line, tc.col, tc.msg)
			}
			if !strings.Contains(err.Error(), "bad.cedar:") {
				t.Errorf("error text does not name the file: %v", err)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name string
		src  string
		msg  string
	}{
		{"unknown principal type", `permit(principal == User::"alice", action, resource);`, `"User" is not a principal entity type`},
		{"unknown group type", `permit(principal in Team::"a", action, resource);`, `unknown principal or group entity type "Team"`},
		{"resource type as principal", `permit(principal is Service, action, resource);`, `"Service" is not a principal entity type`},
		{"unknown resource type", `permit(principal, action, resource == Bucket::"b");`, `"Bucket" is not a resource entity type`},
		{"unknown resource is", `permit(principal, action, resource is Bucket);`, `"Bucket" is not a resource entity type`},
		{"unknown action", `permit(principal, action == Action::"kms:sign", resource);`, `unknown action Action::"kms:sign"`},
		{"unknown action in set", `permit(principal, action in [Action::"connect", Action::"read"], resource);`, `unknown action Action::"read"`},
		{"non-action in action scope", `permit(principal, action == Service::"x", resource);`, `is not an action`},
		{"namespaced type", `permit(principal == ward::Workload::"x", action, resource);`, `"ward::Workload" is not a principal`},
		{"unknown type in condition", `permit(principal, action, resource) when { principal in Tenant::"a" };`, `unknown entity type "Tenant"`},
		{"unknown type in set literal", `permit(principal, action, resource) when { [Tenant::"a"].contains(principal) };`, `unknown entity type "Tenant"`},
		{"unknown action in condition", `permit(principal, action, resource) when { action == Action::"delete" };`, `unknown action Action::"delete"`},
		{"unknown is type in condition", `permit(principal, action, resource) when { resource is Bucket };`, `unknown entity type "Bucket" after`},
		{"unknown context field", `permit(principal, action, resource) when { context.tls == "1.3" };`, `unknown context field "tls"`},
		{"unknown context has", `permit(principal, action, resource) when { context has cluster };`, `unknown context field "cluster"`},
		{"unknown principal attribute", `permit(principal, action, resource) when { principal.namespace == "x" };`, `principal has no attribute "namespace"`},
		{"unknown resource attribute", `permit(principal, action, resource) when { resource.owner == "x" };`, `resource has no attribute "owner"`},
		{"action attribute", `permit(principal, action, resource) when { action.name == "x" };`, `actions have no attributes`},
		{"tags", `permit(principal, action, resource) when { principal.hasTag("x") };`, `carry no tags`},
		{"bad id", `@id("has space") permit(principal, action, resource);`, `not a valid policy id`},
		{"bad dryrun", `@dryrun("yes") permit(principal, action, resource);`, `must be "true" or "false"`},
		{"duplicate id", "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") forbid(principal, action, resource);", `already used at v.cedar:1:1`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Compile(map[string][]byte{"v.cedar": []byte(tc.src)})
			if err == nil || s != nil {
				t.Fatalf("accepted: set=%v err=%v", s, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not contain %q", err, tc.msg)
			}
		})
	}
	// Valid references to every part of the model compile.
	mustCompile(t, map[string]string{"ok.cedar": `
permit (principal is Workload in TrustDomain::"a", action in [Action::"connect", Action::"kms:*"], resource is Key in Key::"k")
when { principal.labels has app && principal.trust_domain == "a" && principal.path like "/x/*" && resource.classification == "internal"
       && resource.name == "k" && context.destination == "" && context.time > datetime("2020-01-01") && context.unix_time > 0
       && context.source_trust_domain == "a" && context.tls_version == "1.3" && principal in Group::"g" && resource has port
       && action in Action::"kms:*" && principal.labels.app == "web" };`})
}

func TestCompileAllOrNothing(t *testing.T) {
	files := map[string][]byte{
		"a.cedar": []byte(`@id("a") permit(principal, action, resource);`),
		"b.cedar": []byte(`@id("b") permit(principal == Nope::"x", action, resource);`),
		"c.cedar": []byte(`@id("c") permit(principal, action, resource`),
	}
	s, err := Compile(files)
	var ce *CompileError
	if s != nil || !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("set=%v err=%v", s, err)
	}
	if ce.Problems[0].File != "b.cedar" || ce.Problems[0].Kind != "validation" || ce.Problems[0].Policy != "b" ||
		ce.Problems[1].File != "c.cedar" || ce.Problems[1].Kind != "syntax" {
		t.Fatalf("problems %+v", ce.Problems)
	}
	if _, err := Compile(map[string][]byte{"big.cedar": make([]byte, MaxFileSize+1)}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestAnnotationsAndDefaults(t *testing.T) {
	s := mustCompile(t, map[string]string{
		"b.cedar": "permit(principal, action, resource);\n@dryrun(\"false\") @description(\"kept\") forbid(principal, action, resource) when { false };",
		"a.cedar": "@id(\"named\")\n@dryrun(\"true\")\nforbid(principal, action, resource);",
	})
	got := s.Policies()
	want := []struct {
		id, effect string
		dry        bool
		file       string
		line       int
	}{
		{"named", "forbid", true, "a.cedar", 1},
		{"b.cedar#0", "permit", false, "b.cedar", 1},
		{"b.cedar#1", "forbid", false, "b.cedar", 2},
	}
	if len(got) != len(want) {
		t.Fatalf("policies %+v", got)
	}
	for i, w := range want {
		g := got[i]
		if g.ID != w.id || g.Effect != w.effect || g.DryRun != w.dry || g.File != w.file || g.Line != w.line || g.Text == "" {
			t.Errorf("policy %d = %+v, want %+v", i, g, w)
		}
	}
	if s.Len() != 3 {
		t.Errorf("Len %d", s.Len())
	}
}

func TestBundle(t *testing.T) {
	b := Bundle{
		Version:  7,
		Files:    map[string][]byte{"shop.cedar": []byte(shopPolicy)},
		DenyList: DenyList{SPIFFEIDs: []string{intern}, Serials: []string{"01"}},
	}
	raw, err := MarshalBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseBundle(raw)
	if err != nil || !reflect.DeepEqual(back, b) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	set, err := CompileBundle(back)
	if err != nil {
		t.Fatal(err)
	}
	if set.Version() != 7 {
		t.Errorf("version %d", set.Version())
	}
	if d := set.Decide(connect(intern, "db")); d.Allowed || d.Cause != CauseDenyList || d.Version != 7 {
		t.Errorf("deny-listed: %+v", d)
	}
	if d := set.Decide(with(connect(web, "api"), func(r *Request) { r.CertSerial = "1" })); d.Cause != CauseDenyList {
		t.Errorf("deny-listed serial: %+v", d)
	}
	bad := []struct{ name, json string }{
		{"unknown field", `{"version":1,"files":{},"deny_list":{},"extra":1}`},
		{"trailing", `{"version":1,"files":{},"deny_list":{}} {}`},
		{"not json", `version: 1`},
		{"bad base64", `{"version":1,"files":{"a":"!!"}}`},
	}
	for _, tc := range bad {
		if _, err := ParseBundle([]byte(tc.json)); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if _, err := CompileBundle(Bundle{Files: b.Files, DenyList: DenyList{Serials: []string{"g"}}}); err == nil {
		t.Error("bad deny-list accepted by CompileBundle")
	}
}

func TestDiff(t *testing.T) {
	old := mustCompile(t, map[string]string{"p.cedar": `
@id("keep") permit(principal, action == Action::"connect", resource == Service::"a");
@id("change") permit(principal, action == Action::"connect", resource == Service::"b");
@id("drop") permit(principal, action == Action::"connect", resource == Service::"c");
@id("same-but-reformatted") permit(principal, action, resource == Service::"d");`})
	nw := mustCompile(t, map[string]string{"q.cedar": `
@id("keep") permit(principal, action == Action::"connect", resource == Service::"a");
@id("change") @dryrun("true") permit(principal, action == Action::"connect", resource == Service::"b");
@id("new") forbid(principal, action, resource);
@id("same-but-reformatted")
permit (
  principal,
  action,
  resource == Service::"d"
);`})
	nw, err := nw.WithDenyList(DenyList{Serials: []string{"ab"}})
	if err != nil {
		t.Fatal(err)
	}
	d := DiffSets(old, nw)
	if !slices.Equal(d.Added, []string{"new"}) || !slices.Equal(d.Removed, []string{"drop"}) || !slices.Equal(d.Changed, []string{"change"}) ||
		!slices.Equal(d.DenyAdded.Serials, []string{"ab"}) || len(d.DenyRemoved.Serials) != 0 {
		t.Fatalf("diff %+v", d)
	}
	if !strings.Contains(d.String(), "+ policy new\n") || !strings.Contains(d.String(), "+ deny serial ab\n") {
		t.Errorf("rendered diff:\n%s", d)
	}
	if !DiffSets(old, old).Empty() || DiffSets(old, nw).Empty() {
		t.Error("Empty() wrong")
	}
	if d := DiffSets(nil, old); len(d.Added) != 4 {
		t.Errorf("diff from nil %+v", d)
	}
	if d := DiffSets(nw, nil); len(d.Removed) != 4 || !slices.Equal(d.DenyRemoved.Serials, []string{"ab"}) {
		t.Errorf("diff to nil %+v", d)
	}
}

func TestExplain(t *testing.T) {
	set := mustCompile(t, map[string]string{"shop.cedar": shopPolicy})
	x := set.Explain(with(connect(web, "api"), func(r *Request) { r.Context.SourceTrustDomain = "dev.example" }))
	if !x.Decision.Allowed || x.Total != 9 {
		t.Fatalf("explanation %+v", x)
	}
	got := map[string]string{}
	for _, c := range x.Candidates {
		got[c.ID] = c.Outcome
	}
	want := map[string]string{
		"web-to-api":      OutcomePermit,
		"canary-deny-dev": OutcomeDryRunForbid,
		"big-ports":       OutcomeNoMatch,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
	x = set.Explain(connect(batch, "metrics"))
	if len(x.Candidates) != 1 || x.Candidates[0].ID != "labelled" || x.Candidates[0].Outcome != OutcomeError || x.Candidates[0].Error == "" {
		t.Fatalf("error candidate %+v", x.Candidates)
	}
	x = set.Explain(connect(intern, "db"))
	var forbid bool
	for _, c := range x.Candidates {
		forbid = forbid || c.ID == "no-ops-to-db" && c.Outcome == OutcomeForbid
	}
	if !forbid || x.Decision.Allowed {
		t.Fatalf("forbid not explained: %+v", x)
	}
}

func TestParseSPIFFEID(t *testing.T) {
	tests := []struct {
		id, td, path string
		ok           bool
	}{
		{"spiffe://example.org", "example.org", "", true},
		{"spiffe://example.org/ns/a/sa/b", "example.org", "/ns/a/sa/b", true},
		{"spiffe://ex_1-2.org/A.b-c_d", "ex_1-2.org", "/A.b-c_d", true},
		{"spiffe://example.org/", "", "", false},
		{"spiffe://example.org//a", "", "", false},
		{"spiffe://example.org/a/../b", "", "", false},
		{"spiffe://example.org/./b", "", "", false},
		{"spiffe://Example.org/a", "", "", false},
		{"spiffe:///a", "", "", false},
		{"http://example.org/a", "", "", false},
		{"spiffe://example.org/a?x=1", "", "", false},
		{"spiffe://example.org:8080/a", "", "", false},
	}
	for _, tc := range tests {
		td, path, err := parseSPIFFEID(tc.id)
		if (err == nil) != tc.ok || td != tc.td || path != tc.path {
			t.Errorf("parseSPIFFEID(%q) = %q %q %v", tc.id, td, path, err)
		}
	}
}

// TestValidationPointsAtTheToken: a validation problem on a later line of
// a policy is reported where the offending name is, not at the policy's
// first character.
func TestValidationPointsAtTheToken(t *testing.T) {
	tests := []struct {
		name      string
		src       string
		line, col int
	}{
		{"unknown action", "// header\npermit (\n  principal,\n  action == Action::\"conect\",\n  resource\n);", 4, 21},
		{"unknown attribute", "permit (principal, action, resource)\nwhen {\n  principal.namespace == \"x\"\n};", 3, 13},
		{"unknown context field", "permit (principal, action, resource)\nwhen { context has cluster };", 2, 20},
		{"unknown type", "permit (principal, action,\n   resource == Bucket::\"b\");", 2, 16},
		{"second policy", "permit (principal, action, resource);\n\nforbid (principal, action, resource)\nwhen { resource.owner == \"x\" };", 4, 17},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(map[string][]byte{"p.cedar": []byte(tc.src)})
			var ce *CompileError
			if !errors.As(err, &ce) || len(ce.Problems) != 1 {
				t.Fatalf("err = %v, want one problem", err)
			}
			if p := ce.Problems[0]; p.Line != tc.line || p.Column != tc.col {
				t.Fatalf("problem at %d:%d, want %d:%d: %v", p.Line, p.Column, tc.line, tc.col, p)
			}
		})
	}
}
