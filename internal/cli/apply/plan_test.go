package apply

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/attest"
)

func mustSet(t *testing.T, files map[string]string) *Set {
	t.Helper()
	dir := t.TempDir()
	for n, c := range files {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set, err := Load([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func sel(s string) attest.Selector {
	p, err := attest.ParseSelector(s)
	if err != nil {
		panic(err)
	}
	return p
}

func baseState() *State {
	return &State{
		Keys:            map[string]*KeySpec{"old/key": {Name: "old/key", Classification: "internal", MinDecryptVersion: 1}, "a/b": {Name: "a/b", Classification: "confidential", MinDecryptVersion: 1}},
		KeyLatest:       map[string]uint32{"old/key": 1, "a/b": 3},
		Classifications: []string{"confidential", "internal", "public", "restricted"},
		Entries: []*StoredEntry{
			{Revision: 5, EntrySpec: EntrySpec{ID: strings.Repeat("a", 32), SPIFFEID: "spiffe://e/web", ParentID: "spiffe://e/ward/agent/n", Selectors: []attest.Selector{sel("unix:uid:1")}, Labels: map[string]string{"app": "web"}}},
			{Revision: 6, EntrySpec: EntrySpec{ID: strings.Repeat("b", 32), SPIFFEID: "spiffe://e/stray", ParentID: "spiffe://e/ward/agent/n", Selectors: []attest.Selector{sel("unix:uid:9")}}},
		},
		Policy:        map[string][]byte{"kept.cedar": []byte("permit (principal, action == Action::\"connect\", resource);\n")},
		PolicyVersion: 3,
		MaxBatch:      2,
		Federations: map[string]*StoredFederation{
			"c.example":    {Source: "api", FederationSpec: FederationSpec{TrustDomain: "c.example", EndpointURL: "https://c.example:8444", Profile: "https_spiffe", EndpointSPIFFEID: "spiffe://c.example/ward/server"}},
			"conf.example": {Source: "config", FederationSpec: FederationSpec{TrustDomain: "conf.example", EndpointURL: "https://conf.example", Profile: "https_web"}},
		},
	}
}

const planDocs = `kind: Key
name: a/b
classification: confidential
min_decrypt_version: 2
---
kind: Key
name: new/key
classification: restricted
---
kind: Entry
spiffe_id: spiffe://e/web
parent_id: spiffe://e/ward/agent/n
selectors: [unix:uid:1]
ttl: 1h
labels: {app: frontend}
---
kind: Entry
spiffe_id: spiffe://e/api
parent_id: spiffe://e/ward/agent/n
selectors: [unix:uid:2]
---
kind: Policy
file: p
---
kind: Federation
trust_domain: b.example
endpoint_url: https://b.example:8444
bundle: b.json
`

func TestPlan(t *testing.T) {
	set := mustSet(t, map[string]string{"d.yaml": planDocs, "p/connect.cedar": "permit (principal, action == Action::\"connect\", resource == Service::\"api\");\n", "b.json": `{"keys":[]}`})
	p, err := NewPlan(set, baseState(), false)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	p.Render(&out, false)
	got := out.String()
	for _, want := range []string{
		"~ key a/b", "min_decrypt_version: 1 → 2",
		"+ key new/key  classification restricted",
		"~ entry spiffe://e/web", "ttl: 0 → 1h", `labels.app: "web" → "frontend"`,
		"+ entry spiffe://e/api",
		"+ policy file p/connect.cedar",
		"+ federation b.example  endpoint https://b.example:8444, profile https_spiffe, endpoint ID spiffe://b.example/ward/server",
		"Plan: 4 to create, 2 to change, 0 to delete.",
		"1 federation relationship(s) not in the documents are kept (--prune removes them)",
		"1 key(s) not in the documents are kept",
		"1 entry(ies) not in the documents are kept (--prune deletes them)",
		"policy file(s) kept.cedar not in the documents stay in the set",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("plan lacks %q:\n%s", want, got)
		}
	}
	if len(p.PolicyFiles) != 2 {
		t.Fatalf("policy set %v: want the kept file and the new one", p.PolicyFiles)
	}
	if bs := p.batches(); len(bs) != 1 || len(bs[0]) != 2 {
		t.Fatalf("batches %v", bs)
	}
	r := batchRequest(p.Entries, false)
	if len(r.Update) != 1 || r.Update[0].Id != strings.Repeat("a", 32) || r.Update[0].Revision != 5 || r.Update[0].TtlSeconds != 3600 || len(r.Create) != 1 {
		t.Fatalf("batch request %v", r)
	}

	// --prune deletes the stray entry and drops the kept policy file.
	p, err = NewPlan(set, baseState(), true)
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	p.Render(&out, false)
	if !strings.Contains(out.String(), "- entry spiffe://e/stray") || !strings.Contains(out.String(), "- policy file kept.cedar") || len(p.PolicyFiles) != 1 ||
		!strings.Contains(out.String(), "- federation c.example") || strings.Contains(out.String(), "conf.example") {
		t.Fatalf("prune plan:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "1 key(s) not in the documents are kept") {
		t.Fatalf("--prune must never touch keys:\n%s", out.String())
	}
	if r := batchRequest(p.Entries, false); len(r.Delete) != 1 || r.Delete[0].Revision != 6 {
		t.Fatalf("prune request %v", r)
	}
}

func TestPlanErrorsNeedState(t *testing.T) {
	cases := []struct {
		name, docs string
		want       string
	}{
		{"unknown classification", "kind: Key\nname: x\nclassification: confidental\n", "d.yaml:3: field classification: classification \"confidental\" is not configured on the authority (did you mean confidential?)"},
		{"classification change", "kind: Key\nname: a/b\nclassification: internal\n", "d.yaml:3: field classification: key a/b has classification confidential"},
		{"purpose change", "kind: Key\nname: a/b\nclassification: confidential\npurpose: other\n", "d.yaml:4: field purpose"},
		{"min_decrypt_version too high", "kind: Key\nname: a/b\nclassification: confidential\nmin_decrypt_version: 4\n", "versions up to 3"},
		{"federation without bundle", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\n", "d.yaml:1: field bundle: a new https_spiffe relationship needs"},
		{"federation changes", "kind: Federation\ntrust_domain: c.example\nendpoint_url: https://c2.example\n", "cannot change in place"},
		{"federation allowed gateways change", "kind: Federation\ntrust_domain: c.example\nendpoint_url: https://c.example:8444\nallowed_gateways: [10.0.0.0/8]\n", "allowed_gateways \"\" → \"10.0.0.0/8\""},
		{"federation network turned on", "kind: Federation\ntrust_domain: c.example\nendpoint_url: https://c.example:8444\nnetwork: true\n", "network \"false\" → \"true\""},
		{"federation network endpoints and more change", "kind: Federation\ntrust_domain: n.example\nendpoint_url: https://n2.example:8444\nnetwork: true\nnetwork_endpoint_cidrs: [203.0.113.0/24]\n", "network_endpoint_cidrs \"198.51.100.0/24\" → \"203.0.113.0/24\""},
		{"federation network turned off", "kind: Federation\ntrust_domain: n.example\nendpoint_url: https://n.example:8444\n", "cannot change in place"},
		{"federation from config", "kind: Federation\ntrust_domain: conf.example\nendpoint_url: https://other.example\nprofile: https_web\n", "server's configuration"},
		{"policy does not compile", "kind: Policy\nname: x.cedar\ncedar: |\n  permit (principal,\n    action == Action::\"conect\", resource);\n", "d.yaml:5: field cedar: validation error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set := mustSet(t, map[string]string{"d.yaml": tc.docs})
			st := baseState()
			st.Federations["n.example"] = &StoredFederation{Source: "api", FederationSpec: FederationSpec{TrustDomain: "n.example", EndpointURL: "https://n.example:8444",
				Profile: "https_spiffe", EndpointSPIFFEID: "spiffe://n.example/ward/server", Network: true, NetworkEndpoints: []string{"198.51.100.0/24"}}}
			_, err := NewPlan(set, st, false)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("NewPlan = %v, want Errors", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v\nlacks %q", err, tc.want)
			}
		})
	}
}

// network_endpoint_cidrs alone changes in place: the plan holds an update
// of the relationship (was an error asking to remove and add it again).
func TestPlanFederationNetworkEndpointsChangeInPlace(t *testing.T) {
	set := mustSet(t, map[string]string{"d.yaml": "kind: Federation\ntrust_domain: n.example\nendpoint_url: https://n.example:8444\nnetwork: true\nnetwork_endpoint_cidrs: [203.0.113.0/24]\n"})
	st := baseState()
	st.Federations["n.example"] = &StoredFederation{Source: "api", FederationSpec: FederationSpec{TrustDomain: "n.example", EndpointURL: "https://n.example:8444",
		Profile: "https_spiffe", EndpointSPIFFEID: "spiffe://n.example/ward/server", Network: true, NetworkEndpoints: []string{"198.51.100.0/24"}}}
	p, err := NewPlan(set, st, false)
	if err != nil {
		t.Fatal(err)
	}
	var ch *Change
	for _, c := range p.Federations {
		if c.Name == "n.example" {
			ch = c
		}
	}
	if ch == nil || ch.Action != Update || len(ch.Fields) != 1 || ch.Fields[0] != (FieldChange{"network_endpoint_cidrs", "198.51.100.0/24", "203.0.113.0/24"}) {
		t.Fatalf("plan for n.example: %+v", ch)
	}
	if req := addFederationRequest(ch.federation); req.TrustDomain != "n.example" || strings.Join(req.NetworkEndpointCidrs, ",") != "203.0.113.0/24" || !req.Network {
		t.Fatalf("request: %+v", req)
	}
}

func TestPlanMatchesByExplicitID(t *testing.T) {
	docs := "kind: Entry\nid: " + strings.Repeat("a", 32) + "\nspiffe_id: spiffe://e/web\nparent_id: spiffe://e/ward/agent/n\nselectors: [unix:uid:7]\nlabels: {app: web}\n"
	p, err := NewPlan(mustSet(t, map[string]string{"d.yaml": docs}), baseState(), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Entries) != 1 || p.Entries[0].Action != Update || p.Entries[0].Fields[0].Field != "selectors" {
		t.Fatalf("want one selector change on the entry named by id, got %+v", p.Entries)
	}
}

func TestExportRoundTrip(t *testing.T) {
	st := baseState()
	st.Entries[0].TTL = 90 * time.Minute
	st.Entries[0].DNSNames = []string{"web.internal"}
	st.Entries[0].FederatesWith = []string{"partner.example.com"}
	st.Entries[0].Hint = "web: frontend"
	st.Keys["a/b"].MinDecryptVersion = 2
	st.Keys["a/b"].Purpose = "it's \"quoted\""
	st.Policy["multi.cedar"] = []byte("// trailing spaces   \npermit (principal, action, resource);\n\n")
	st.Posture = []byte("# the posture  \ndefaults:\n  max_svid_ttl: 1h\n  rotation: {confidential: {period: 30d}}\n")
	st.Federations["c.example"].Network = true
	st.Federations["c.example"].NetworkEndpoints = []string{"198.51.100.0/24", "2001:db8::/32"}
	var buf bytes.Buffer
	if err := Export(&buf, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "network: true\nnetwork_endpoint_cidrs:\n") {
		t.Fatalf("the relationship's network is not exported:\n%s", buf.String())
	}
	set := mustSet(t, map[string]string{"export.yaml": buf.String()})
	p, err := NewPlan(set, st, true)
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if !p.Empty() {
		var out bytes.Buffer
		p.Render(&out, false)
		t.Fatalf("export then plan is not empty:\n%s\nexported:\n%s", out.String(), buf.String())
	}
}

// TestExampleLoads: examples/apply (the README points at it) reads
// without a problem and its policy set compiles against an empty state.
func TestExampleLoads(t *testing.T) {
	set, err := Load([]string{filepath.Join("..", "..", "..", "examples", "apply")})
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) == 0 || len(set.Entries) == 0 || len(set.Policies) == 0 {
		t.Fatalf("example set %+v lacks a kind", set)
	}
	st := &State{Classifications: []string{"confidential", "internal", "public", "restricted"}}
	p, err := NewPlan(set, st, false)
	if err != nil {
		t.Fatal(err)
	}
	if c, _, _ := p.Counts(); c != len(set.Keys)+len(set.Entries)+len(set.Policies) {
		t.Fatalf("plan on an empty authority creates %d of %d documents", c, len(set.Keys)+len(set.Entries)+len(set.Policies))
	}
}

func TestBatchesBySizeAndCount(t *testing.T) {
	mk := func(n, labelBytes int) *Plan {
		p := &Plan{MaxBatch: 3}
		for i := range n {
			e := &EntrySpec{SPIFFEID: "spiffe://e/w" + strings.Repeat("x", i%3), ParentID: "spiffe://e/p", Selectors: []attest.Selector{sel("unix:uid:1")}}
			if labelBytes > 0 {
				e.Labels = map[string]string{"big": strings.Repeat("v", labelBytes)}
			}
			p.Entries = append(p.Entries, &Change{Action: Create, entry: e})
		}
		return p
	}
	lens := func(bs [][]*Change) []int {
		var out []int
		for _, b := range bs {
			out = append(out, len(b))
		}
		return out
	}
	if got := lens(mk(7, 0).batches()); len(got) != 3 || got[0] != 3 || got[2] != 1 {
		t.Fatalf("by count: %v", got)
	}
	p := mk(3, maxBatchBytes/2)
	p.MaxBatch = 100
	if got := lens(p.batches()); len(got) != 3 {
		t.Fatalf("by size: %v", got)
	}
	if got := (&Plan{}).batches(); len(got) != 0 {
		t.Fatalf("no entries: %v", got)
	}
}

// TestPruneOnlyManagedKinds: --prune with documents of one kind leaves the
// other kinds alone (pruning keys.yaml alone cannot wipe the registry).
func TestPruneOnlyManagedKinds(t *testing.T) {
	set := mustSet(t, map[string]string{"k.yaml": "kind: Key\nname: a/b\nclassification: confidential\n"})
	p, err := NewPlan(set, baseState(), true)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Empty() || p.PolicyFiles != nil {
		var out bytes.Buffer
		p.Render(&out, false)
		t.Fatalf("--prune with only a Key document plans:\n%s", out.String())
	}
}

// A Posture document (a file or inline) is planned as one change: created
// when none is declared, a diff when it differs, nothing when equal; its
// classifications are checked against the authority's, and it is stored
// by Execute as a new posture version.
func TestPlanPosture(t *testing.T) {
	const file = "defaults:\n  tls: {min_version: \"1.3\"}\n  rotation: {confidential: {period: 30d}}\n"
	set := mustSet(t, map[string]string{"p.yaml": "kind: Posture\nfile: posture/p.yaml\n", "posture/p.yaml": file})
	st := baseState()
	p, err := NewPlan(set, st, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Posture) != 1 || p.Posture[0].Action != Create || string(p.PostureFile) != file {
		t.Fatalf("create: %+v", p.Posture)
	}
	var out bytes.Buffer
	p.Render(&out, false)
	if !strings.Contains(out.String(), "+ posture file") || !strings.Contains(out.String(), `+ defaults:`) {
		t.Fatalf("render:\n%s", out.String())
	}
	st.Posture = []byte(file)
	if p, err = NewPlan(set, st, true); err != nil || len(p.Posture) != 0 || p.PostureFile != nil {
		t.Fatalf("unchanged: %+v %v", p, err)
	}
	st.Posture = []byte("defaults: {max_svid_ttl: 1h}\n")
	if p, err = NewPlan(set, st, false); err != nil || len(p.Posture) != 1 || p.Posture[0].Action != Update {
		t.Fatalf("update: %+v %v", p, err)
	}
	st.Classifications = []string{"public"}
	if _, err = NewPlan(set, st, false); err == nil || !strings.Contains(err.Error(), `"confidential" is no KMS classification`) || !strings.Contains(err.Error(), "field file") {
		t.Fatalf("unknown classification: %v", err)
	}
	// Without a Posture document, --prune leaves the declared one alone.
	if p, err = NewPlan(&Set{}, baseState(), true); err != nil || len(p.Posture) != 0 {
		t.Fatalf("no document: %+v %v", p, err)
	}
	for _, tc := range []struct {
		files map[string]string
		want  string
	}{
		{map[string]string{"a.yaml": "kind: Posture\nposture: |\n  defaults: {tls: {min_version: \"1.0\"}}\n"}, "defaults.tls.min_version"},
		{map[string]string{"a.yaml": "kind: Posture\n"}, "exactly one of file"},
		{map[string]string{"a.yaml": "kind: Posture\nfile: missing.yaml\n"}, "cannot read the posture file"},
		{map[string]string{"a.yaml": "kind: Posture\nposture: \"defaults: {}\"\n---\nkind: Posture\nposture: \"defaults: {}\"\n"}, "the posture is also declared at"},
	} {
		dir := t.TempDir()
		for n, c := range tc.files {
			os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644)
		}
		if _, err := Load([]string{dir}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.files, err, tc.want)
		}
	}
}

func TestPlanFederationWithNetwork(t *testing.T) {
	set := mustSet(t, map[string]string{"d.yaml": "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example:8444\nbundle: b.json\nnetwork: true\nnetwork_endpoint_cidrs: [198.51.100.0/24]\n", "b.json": "{}"})
	p, err := NewPlan(set, baseState(), false)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	p.Render(&out, false)
	if !strings.Contains(out.String(), "+ federation b.example  endpoint https://b.example:8444, profile https_spiffe, endpoint ID spiffe://b.example/ward/server, network shared (endpoints in 198.51.100.0/24)") {
		t.Fatalf("plan:\n%s", out.String())
	}
	if r := addFederationRequest(p.Federations[0].federation); !r.Network || len(r.NetworkEndpointCidrs) != 1 {
		t.Fatalf("request %v", r)
	}
}
