package posture

import (
	"strings"
	"testing"
	"time"
)

const example = `
defaults:
  fips_required: true
  tls:
    min_version: "1.3"
    groups: [X25519MLKEM768, P-256]
  mtls_required: ["*"]
  max_svid_ttl: 1h
  rotation:
    confidential: {period: 30d, kept_versions: 3}
  mesh:
    namespaces: [shop]
    services: [payments]
clusters:
  - name: dev
    trust_domain: dev.example.org
    fips_required: false
    max_svid_ttl: 24h
  - name: eu
    region: eu-west
    tls: {min_version: "1.2"}
`

func TestParseAndFor(t *testing.T) {
	f, err := Parse([]byte(example), []string{"confidential", "public"})
	if err != nil {
		t.Fatal(err)
	}
	r, scope := f.For("prod.example.org", "")
	if scope != "defaults" || !r.FIPS() || r.TLS.MinVersion != "1.3" || time.Duration(r.MaxSVIDTTL) != time.Hour || !r.RequiresMTLS("x") {
		t.Fatalf("defaults: %s %+v", scope, r)
	}
	if r.TLS.Groups[1] != "CurveP256" {
		t.Fatalf("alias not canonical: %v", r.TLS.Groups)
	}
	r, scope = f.For("dev.example.org", "")
	if scope != "dev" || r.FIPS() || time.Duration(r.MaxSVIDTTL) != 24*time.Hour || r.TLS.MinVersion != "1.3" || r.Rotation["confidential"].KeptVersions != 3 {
		t.Fatalf("dev: %s %+v", scope, r)
	}
	r, scope = f.For("other.example.org", "eu-west")
	if scope != "eu" || r.TLS.MinVersion != "1.2" || !r.FIPS() {
		t.Fatalf("eu: %s %+v", scope, r)
	}
	// For never lets a caller change the file.
	r.Rotation["confidential"] = Rotation{}
	if r2, _ := f.For("x", ""); r2.Rotation["confidential"].KeptVersions != 3 {
		t.Fatal("For shares the defaults' map")
	}
}

func TestParseErrorsNameFieldAndFix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "file is empty"},
		{"defaults: {tls: {min_version: \"1.1\"}}", `defaults.tls.min_version is "1.1": use "1.2" or "1.3"`},
		{"defaults: {tls: {groups: [X448]}}", "defaults.tls.groups[0] is \"X448\": use one of"},
		{"defaults: {max_svid_ttl: 10s}", "defaults.max_svid_ttl is 10s: use at least 1m"},
		{"defaults: {max_svid_ttl: soon}", `bad duration "soon"`},
		{"defaults: {rotation: {secret: {period: 30d}}}", `defaults.rotation.secret: "secret" is no KMS classification`},
		{"defaults: {rotation: {public: {}}}", "declares nothing: set period and/or kept_versions"},
		{"defaults: {rotation: {public: {period: 10m}}}", "period is 10m0s: use at least 1h"},
		{"defaults: {rotation: {public: {kept_versions: -1}}}", "kept_versions is -1"},
		{"defaults: {mesh: {namespaces: ['*']}}", `defaults.mesh.namespaces[0] is "*": list the names`},
		{"defaults: {mesh: {services: [a, a]}}", `lists "a" twice`},
		{"defaults: {mtls_required: ['a/b']}", "no spaces, quotes or '/'"},
		{"defaults: {fips: true}", `unknown field "fips" under defaults or clusters[]: did you mean "fips_required"?`},
		{"clusters: [{trust_domain: a.example}]", "clusters[0].name is empty"},
		{"clusters: [{name: a}]", "clusters[0] (a) has neither trust_domain nor region"},
		{"clusters: [{name: a, trust_domain: A.example}]", "clusters[0].trust_domain"},
		{"clusters: [{name: a, trust_domain: a.example}, {name: b, trust_domain: a.example}]", "clusters[1] (b) and clusters[0] (a) both apply"},
		{"clusters: [{name: a, trust_domain: a.example, tls: {min_version: '1.0'}}]", "clusters[0].tls.min_version"},
		{"defaults: {}\n---\ndefaults: {}", "more than one YAML document"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.in), []string{"public", "confidential"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
	if _, err := Parse(make([]byte, MaxFileBytes+1), nil); err == nil {
		t.Error("oversize file accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("defaults: {tls: {groups: [x25519]}}"))
	f.Add([]byte("clusters: [{name: a, region: r, rotation: {c: {period: 2h}}}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b, nil)
		if err != nil {
			return
		}
		// A file that parses is valid, and so is every scope of it.
		if err := p.Validate(nil); err != nil {
			t.Fatalf("parsed file fails validation: %v", err)
		}
		for _, c := range p.Clusters {
			r, _ := p.For(c.TrustDomain, c.Region)
			if v := r.TLS.MinVersion; v != "" && v != "1.2" && v != "1.3" {
				t.Fatalf("min_version %q", v)
			}
		}
	})
}
