package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyFederationLint: policy.federation_lint is warn by default,
// strict on request, and anything else is refused naming the field and
// the two values.
func TestPolicyFederationLint(t *testing.T) {
	base := "trust_domain: a.org\ndata_dir: /d\n"
	for _, c := range []struct {
		yaml, want, wantErr string
		strict              bool
	}{
		{"", "warn", "", false},
		{"policy: {federation_lint: warn}\n", "warn", "", false},
		{"policy: {federation_lint: strict}\n", "strict", "", true},
		{"policy: {federation_lint: on}\n", "", `policy.federation_lint "on" is unknown: use warn`, false},
		{"policy: {federation_lint: Strict}\n", "", "policy.federation_lint", false},
		{"policy: {lint: strict}\n", "", "lint", false},
	} {
		cfg, err := Parse([]byte(base + c.yaml))
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: %v, want %q", c.yaml, err, c.wantErr)
			}
			continue
		}
		if err != nil || cfg.Policy.FederationLint != c.want || cfg.Policy.StrictFederationLint() != c.strict {
			t.Errorf("%q: %+v %v", c.yaml, cfg, err)
		}
	}
}

// TestPolicyDocExample: the ward.yaml snippet of docs/policy.md's
// "policy.federation_lint" section parses and turns strict lint on.
func TestPolicyDocExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "### The authority's own check: `policy.federation_lint`")
	_, block, ok2 := strings.Cut(sec, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/policy.md lacks the policy.federation_lint section with its yaml block")
	}
	cfg, err := Parse([]byte("trust_domain: a.org\ndata_dir: /d\n" + block))
	if err != nil || !cfg.Policy.StrictFederationLint() {
		t.Fatalf("docs/policy.md's example: %v", err)
	}
}

// TestPolicyKeepVersions: policy.keep_versions is 50 when 0 or absent,
// taken as given from 1 to 100000, and refused (naming the field, the
// range and the default) when negative or larger: there is no unlimited
// setting.
func TestPolicyKeepVersions(t *testing.T) {
	base := "trust_domain: a.org\ndata_dir: /d\n"
	for _, c := range []struct {
		yaml    string
		want    int
		wantErr string
	}{
		{"", 50, ""},
		{"policy: {keep_versions: 0}\n", 50, ""},
		{"policy: {keep_versions: 1}\n", 1, ""},
		{"policy: {keep_versions: 200}\n", 200, ""},
		{"policy: {keep_versions: -1}\n", 0, "policy.keep_versions -1 is out of range: give how many versions before the current one to keep, 1 to 100000 (0 or absent: 50)"},
		{"policy: {keep_versions: 100001}\n", 0, "no unlimited setting"},
		{"policy: {keep_versions: many}\n", 0, "line 3: cannot unmarshal"},
	} {
		cfg, err := Parse([]byte(base + c.yaml))
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: %v, want %q", c.yaml, err, c.wantErr)
			}
			continue
		}
		if err != nil || cfg.Policy.KeepVersions != c.want {
			t.Errorf("%q: %+v %v", c.yaml, cfg.Policy, err)
		}
	}
}

// TestPolicyRetentionDocExample: the ward.yaml snippet of docs/policy.md's
// retention section parses and sets keep_versions.
func TestPolicyRetentionDocExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "## Version history and retention")
	_, block, ok2 := strings.Cut(sec, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/policy.md lacks the retention section with its yaml block")
	}
	cfg, err := Parse([]byte("trust_domain: a.org\ndata_dir: /d\n" + block))
	if err != nil || cfg.Policy.KeepVersions != 200 {
		t.Fatalf("docs/policy.md's example: %+v %v", cfg.Policy, err)
	}
}
