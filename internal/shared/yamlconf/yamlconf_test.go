package yamlconf

import (
	"strings"
	"testing"
)

type testInner struct {
	Name string `yaml:"name"`
	Port int    `yaml:"port"`
}

type testConfig struct {
	WorkloadAPISocket string      `yaml:"workload_api_socket"`
	AdminAddress      string      `yaml:"admin_address"`
	Inbound           []testInner `yaml:"inbound"`
	Pop               *testInner  `yaml:"x509pop"`
	Timeout           Duration    `yaml:"timeout"`
}

// TestUnknownFieldsInWardsWords: an unknown field is named with its line,
// its section and the nearest valid field, never a Go type.
func TestUnknownFieldsInWardsWords(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
	}{
		{"typo at the top", "workload_api_sock: /x\n", []string{`line 1: unknown field "workload_api_sock" at the top level: did you mean "workload_api_socket"?`, "see docs/x.md"}},
		{"typo in a list", "inbound:\n  - name: a\n    prot: 1\n", []string{`line 3: unknown field "prot" under inbound[]`, `did you mean "port"?`}},
		{"under a pointer", "x509pop:\n  nme: a\n", []string{`unknown field "nme" under inbound[] or x509pop: did you mean "name"?`}},
		{"nothing near", "zzzzzzzz: 1\n", []string{`unknown field "zzzzzzzz" at the top level; the fields there are admin_address, inbound, timeout, workload_api_socket, x509pop`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c testConfig
			err := DecodeStrict([]byte(tc.src), &c, "docs/x.md")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "yamlconf.") || strings.Contains(err.Error(), "not found in type") {
				t.Errorf("error names a Go type: %v", err)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "abc", 0}, {"abc", "abd", 1}, {"port", "prot", 2}, {"", "ab", 2}, {"kitten", "sitting", 3}} {
		if got := editDistance(tc.a, tc.b); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}
