package apply

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const goodDocs = `# a comment
kind: Key
name: tenant-a/payments
classification: confidential
purpose: payment records
min_decrypt_version: 2
---
kind: Entry
spiffe_id: spiffe://example.org/payments
parent_id: spiffe://example.org/ward/agent/node-1
selectors: [unix:uid:1000, unix:gid:10, unix:uid:1000]
ttl: 1h
dns_names: [Payments.Internal]
hint: pay
federates_with: [partner.example.com]
labels: {app: payments, tier: "1"}
---
kind: Policy
name: connect.cedar
cedar: |
  permit (principal, action == Action::"connect", resource);
---
kind: Policy
file: policies/
---
kind: Federation
trust_domain: b.example.org
endpoint_url: https://ward.b.example.org:8444
bundle: b.json
---
`

func TestParseGood(t *testing.T) {
	docs, err := Parse("good.yaml", []byte(goodDocs))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 5 {
		t.Fatalf("%d documents, want 5", len(docs))
	}
	if f := docs[4].Federation; f.TrustDomain != "b.example.org" || f.Profile != "https_spiffe" || f.EndpointSPIFFEID != "spiffe://b.example.org/ward/server" || f.BundlePath != "b.json" {
		t.Fatalf("federation %+v", f)
	}
	k := docs[0].Key
	if docs[0].Line != 2 || k.Name != "tenant-a/payments" || k.Classification != "confidential" || k.Purpose != "payment records" || k.MinDecryptVersion != 2 {
		t.Fatalf("key %+v at line %d", k, docs[0].Line)
	}
	e := docs[1].Entry
	if len(e.Selectors) != 2 || e.Selectors[0].String() != "unix:gid:10" || e.TTL != time.Hour || e.DNSNames[0] != "payments.internal" ||
		e.Labels["tier"] != "1" || e.FederatesWith[0] != "partner.example.com" || e.Hint != "pay" {
		t.Fatalf("entry %+v", e)
	}
	if docs[1].FieldLine("ttl") != 12 {
		t.Fatalf("ttl line %d", docs[1].FieldLine("ttl"))
	}
	p := docs[2].Policy
	if p.Name != "connect.cedar" || !strings.HasPrefix(string(p.Source), "permit") || p.SourceLine != 20 {
		t.Fatalf("inline policy %+v", p)
	}
	if docs[3].Policy.Path != "policies/" {
		t.Fatalf("file policy %+v", docs[3].Policy)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, doc string
		line      int
		field     string
		msg       string
	}{
		{"unknown field suggests", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselector: [unix:uid:1]\n", 4, "selector", "did you mean selectors?"},
		{"unknown kind suggests", "kind: Entyr\n", 1, "kind", "did you mean Entry?"},
		{"federation without trust domain", "kind: Federation\nendpoint_url: https://b.example:8444\n", 1, "trust_domain", "missing"},
		{"federation http endpoint", "kind: Federation\ntrust_domain: b.example\nendpoint_url: http://b.example\n", 3, "endpoint_url", "https://"},
		{"federation bad profile", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nprofile: spiffe\n", 4, "profile", "https_spiffe or https_web"},
		{"federation endpoint id elsewhere", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nendpoint_spiffe_id: spiffe://c.example/ward/server\n", 4, "endpoint_spiffe_id", "not in trust domain b.example"},
		{"federation web with id", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nprofile: https_web\nendpoint_spiffe_id: spiffe://b.example/x\n", 5, "endpoint_spiffe_id", "Web PKI"},
		{"federation allowed gateways everywhere", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nallowed_gateways: [0.0.0.0/0]\n", 4, "allowed_gateways", "allows every address"},
		{"federation allowed gateway without port", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nallowed_gateways: [gw.b.example]\n", 4, "allowed_gateways", "host:port"},
		{"federation network not a bool", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nnetwork: yes please\n", 4, "network", "true or false"},
		{"federation network over https_web", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nprofile: https_web\nnetwork: true\n", 5, "network", "https_spiffe"},
		{"federation network endpoints without network", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nnetwork_endpoint_cidrs: [198.51.100.0/24]\n", 4, "network_endpoint_cidrs", "network: true"},
		{"federation network endpoints everywhere", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nnetwork: true\nnetwork_endpoint_cidrs: [0.0.0.0/0]\n", 5, "network_endpoint_cidrs", "narrower than everything"},
		{"federation network endpoint not a prefix", "kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nnetwork: true\nnetwork_endpoint_cidrs: [198.51.100.1]\n", 5, "network_endpoint_cidrs", "not a CIDR prefix"},
		{"no kind", "name: x\n", 1, "kind", "missing"},
		{"not a mapping", "- a\n- b\n", 1, "", "must be a mapping"},
		{"invalid YAML", "kind: Key\nname: [\n", 2, "", "invalid YAML"},
		{"kind not a string", "kind: [Key]\n", 1, "kind", "expected a string, got a list"},
		{"field twice", "kind: Key\nname: a\nname: b\nclassification: c\n", 3, "name", "twice"},
		{"key without classification", "kind: Key\nname: a\n", 1, "classification", "missing"},
		{"bad key name", "kind: Key\nname: Bad//Name\nclassification: c\n", 2, "name", "key name"},
		{"bad min_decrypt_version", "kind: Key\nname: a\nclassification: c\nmin_decrypt_version: zero\n", 4, "min_decrypt_version", "version number"},
		{"bad spiffe id", "kind: Entry\nspiffe_id: https://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\n", 2, "spiffe_id", "not a SPIFFE ID"},
		{"bad selector", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors:\n  - unix:uid:1\n  - nocolon\n", 6, "selectors", "nocolon"},
		{"empty selectors", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: []\n", 4, "selectors", "empty"},
		{"selectors not a list", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: unix:uid:1\n", 4, "selectors", "expected a list"},
		{"bad ttl", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\nttl: soon\n", 5, "ttl", "bad duration"},
		{"labels not a mapping", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\nlabels: [a]\n", 5, "labels", "mapping"},
		{"label value a list", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\nlabels:\n  app: [x]\n", 6, "labels.app", "expected a string"},
		{"bad federates_with", "kind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\nfederates_with: [spiffe://x/y]\n", 5, "federates_with", "trust domain"},
		{"bad entry id", "kind: Entry\nid: XYZ\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1]\n", 2, "id", "32 lowercase hex"},
		{"policy with both", "kind: Policy\nname: a\nfile: a.cedar\ncedar: x\n", 1, "file", "exactly one"},
		{"policy with neither", "kind: Policy\nname: a\n", 1, "file", "exactly one"},
		{"inline policy without name", "kind: Policy\ncedar: x\n", 1, "name", "missing"},
		{"name with file", "kind: Policy\nname: a\nfile: a.cedar\n", 2, "name", "only for inline"},
		{"second document", "kind: Key\nname: a\nclassification: c\n---\nkind: Key\nnme: b\nclassification: c\n", 6, "nme", "did you mean name?"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("docs/x.yaml", []byte(tc.doc))
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("Parse = %v, want Errors", err)
			}
			e := es[0]
			if e.File != "docs/x.yaml" || e.Line != tc.line || e.Field != tc.field || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("first error %q (line %d, field %q), want line %d field %q containing %q", e.Error(), e.Line, e.Field, tc.line, tc.field, tc.msg)
			}
			if !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("message does not say nothing changed: %v", err)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse("x.yaml", []byte("kind: Key\nname: a\n---\nkind: Keys\n---\nkind: Entry\n"))
	var es Errors
	if !errors.As(err, &es) || len(es) < 4 {
		t.Fatalf("want every problem, got %v", err)
	}
}

func TestBuildFindsDuplicatesAcrossFiles(t *testing.T) {
	a, err := Parse("a.yaml", []byte("kind: Key\nname: k\nclassification: c\n---\nkind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:1, unix:uid:2]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b.yaml", []byte("kind: Key\nname: k\nclassification: c\n---\nkind: Entry\nspiffe_id: spiffe://e/a\nparent_id: spiffe://e/b\nselectors: [unix:uid:2, unix:uid:1]\n---\nkind: Policy\nname: p\ncedar: x\n---\nkind: Policy\nname: p\ncedar: y\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, errs := build(append(a, b...), nil)
	got := Errors(errs).Error()
	for _, want := range []string{"b.yaml:2: field name: key k is also declared at a.yaml:1", "b.yaml:6: field spiffe_id: an entry for spiffe://e/a under spiffe://e/b with the same selectors is also declared at a.yaml:5", "b.yaml:15: field name: policy file p is also declared at b.yaml:10"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}

func TestLineDiff(t *testing.T) {
	got := strings.Join(lineDiff([]byte("a\nb\nc\nd\ne\nf\n"), []byte("a\nB\nc\nd\ne\nf\ng\n")), "|")
	want := "  a|- b|+ B|  c|  ... (2 unchanged lines)|  f|+ g"
	if got != want {
		t.Fatalf("lineDiff = %q, want %q", got, want)
	}
}

// FuzzParse feeds untrusted documents to the parser: it must never panic,
// every document it returns must be complete, and every problem must name
// the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(goodDocs))
	f.Add([]byte("kind: Entry\nlabels: {a: [b]}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("kind: Policy\ncedar: >\n  folded\n"))
	f.Add([]byte("---\n---\nkind: Key\n"))
	f.Add([]byte("kind: Posture\nposture: |\n  defaults: {max_svid_ttl: 1h}\n"))
	f.Add([]byte("kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example\nnetwork: true\nnetwork_endpoint_cidrs: [198.51.100.0/24]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		docs, err := Parse("f.yaml", b)
		var es Errors
		if err != nil && (!errors.As(err, &es) || len(es) == 0) {
			t.Fatalf("error is not Errors: %v", err)
		}
		for _, e := range es {
			if e.File != "f.yaml" {
				t.Fatalf("error without the file: %v", e)
			}
		}
		for _, d := range docs {
			switch {
			case d.Kind == KindKey && d.Key != nil && d.Key.Name != "":
			case d.Kind == KindEntry && d.Entry != nil && len(d.Entry.Selectors) > 0:
			case d.Kind == KindPolicy && d.Policy != nil && (d.Policy.Path != "" || d.Policy.Name != ""):
			case d.Kind == KindFederation && d.Federation != nil && d.Federation.TrustDomain != "" && d.Federation.EndpointURL != "":
			case d.Kind == KindPosture && d.Posture != nil && (d.Posture.Path != "" || d.Posture.Source != nil):
			default:
				t.Fatalf("incomplete document %+v", d)
			}
		}
		if len(docs) > 0 && err == nil {
			if _, errs := build(docs, nil); errs == nil {
				_ = errs
			}
		}
	})
}

// A Federation document sets what `ward federation add --network
// --network-endpoint-cidr` sets, and the request carries it.
func TestParseFederationNetwork(t *testing.T) {
	docs, err := Parse("f.yaml", []byte("kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example:8444\nnetwork: true\nnetwork_endpoint_cidrs: [198.51.100.0/24, \"2001:db8::/32\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := docs[0].Federation
	if !f.Network || strings.Join(f.NetworkEndpoints, ",") != "198.51.100.0/24,2001:db8::/32" {
		t.Fatalf("spec %+v", f)
	}
	r := addFederationRequest(f)
	if !r.Network || strings.Join(r.NetworkEndpointCidrs, ",") != "198.51.100.0/24,2001:db8::/32" || r.EndpointSpiffeId != "spiffe://b.example/ward/server" {
		t.Fatalf("request %v", r)
	}
	docs, err = Parse("f.yaml", []byte("kind: Federation\ntrust_domain: b.example\nendpoint_url: https://b.example:8444\nnetwork: false\n"))
	if err != nil || docs[0].Federation.Network {
		t.Fatalf("network: false: %v %+v", err, docs)
	}
}
