package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/registry"
)

func TestIdentityConfig(t *testing.T) {
	dir := t.TempDir()
	notCA := filepath.Join(dir, "empty.pem")
	os.WriteFile(notCA, []byte("nothing here"), 0o600)
	base := "trust_domain: example.org\ndata_dir: /tmp/x\n"
	cases := []struct {
		name, yaml, err string
	}{
		{"defaults", "", ""},
		{"full", "identity:\n  svid_ttl: 30m\n  agent_svid_ttl: 2h\n  node_api_address: 127.0.0.1:8443\n  node_api_dns_names: [ward.example.org]\n  join_token_max_ttl: 1h\n", ""},
		{"unknown field", "identity:\n  svid_tll: 1h\n", "svid_tll"},
		{"bad duration", "identity:\n  svid_ttl: soon\n", "bad duration"},
		{"svid ttl too short", "identity:\n  svid_ttl: 1s\n", "identity.svid_ttl"},
		{"max below default", "identity:\n  svid_ttl: 2h\n  max_svid_ttl: 1h\n", "identity.max_svid_ttl"},
		{"agent above max", "identity:\n  agent_svid_ttl: 48h\n", "identity.agent_svid_ttl"},
		{"short intermediate", "identity:\n  intermediate_ttl: 24h\n", "identity.intermediate_ttl"},
		{"short root", "identity:\n  root_ttl: 8d\n", "identity.root_ttl"},
		{"long refresh hint", "identity:\n  refresh_hint: 12h\n", "identity.refresh_hint"},
		{"bad key type", "identity:\n  key_type: rsa\n", "identity.key_type"},
		{"bad address", "identity:\n  node_api_address: localhost\n", "identity.node_api_address"},
		{"bad dns", "identity:\n  node_api_dns_names: [\"a b\"]\n", "identity.node_api_dns_names"},
		{"missing bundle", "identity:\n  x509pop_ca_bundle: /nonexistent.pem\n", "identity.x509pop_ca_bundle"},
		{"psat", "identity:\n  k8s_psat:\n    - {cluster: prod-eu, apiserver: https://10.0.0.1:6443, allowed_service_accounts: [ward-system:ward-agent]}\n", ""},
		{"psat bad cluster", "identity:\n  k8s_psat:\n    - {cluster: Prod/EU, allowed_service_accounts: [a:b]}\n", "identity.k8s_psat[0]: cluster"},
		{"psat twice", "identity:\n  k8s_psat:\n    - {cluster: c, allowed_service_accounts: [a:b]}\n    - {cluster: c, allowed_service_accounts: [a:b]}\n", "listed twice"},
		{"psat no accounts", "identity:\n  k8s_psat:\n    - {cluster: c}\n", "allowed_service_accounts is required"},
		{"psat bad account", "identity:\n  k8s_psat:\n    - {cluster: c, allowed_service_accounts: [ward-agent]}\n", "not namespace:name"},
		{"psat http", "identity:\n  k8s_psat:\n    - {cluster: c, apiserver: http://h, allowed_service_accounts: [a:b]}\n", "https://"},
		{"no certs in bundle", "identity:\n  x509pop_ca_bundle: " + notCA + "\n", "no PEM CERTIFICATE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(base + tc.yaml))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Identity.SVIDTTL == 0 || c.Identity.JoinTokenMaxTTL == 0 {
					t.Fatalf("defaults not applied: %+v", c.Identity)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.err)
			}
		})
	}
}

// TestIdentityIssueLimits: the per-agent bounds default to the registry's
// (8, 16, 32, 64, 1024) when left out, take any value in their range, and refuse
// 0, negative and absurd values with an error naming the field, its range
// and its default.
func TestIdentityIssueLimits(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /tmp/x\nidentity:\n"
	c, err := Parse([]byte(base + "  svid_ttl: 1h\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"max_svids_per_entry": 8, "max_displaced_per_entry": 16, "max_displacements_per_agent_hour": 32, "max_jwt_svids_per_entry": 64, "max_jwt_svids_per_agent": 1024}
	for _, l := range c.Identity.IssueLimits() {
		if l.Value() != want[l.Name] {
			t.Errorf("default %s = %d, want %d", l.Name, l.Value(), want[l.Name])
		}
	}
	cases := []struct {
		name, yaml string
		field      string
		value      int
		err        string
	}{
		{"svids set", "  max_svids_per_entry: 12\n", "max_svids_per_entry", 12, ""},
		{"svids lowest", "  max_svids_per_entry: 3\n", "max_svids_per_entry", 3, ""},
		{"svids zero", "  max_svids_per_entry: 0\n", "", 0, "identity.max_svids_per_entry 0 is out of range: use between 3 and 256 (default 8"},
		{"svids two", "  max_svids_per_entry: 2\n", "", 0, "identity.max_svids_per_entry 2 is out of range"},
		{"svids negative", "  max_svids_per_entry: -1\n", "", 0, "identity.max_svids_per_entry -1 is out of range"},
		{"svids absurd", "  max_svids_per_entry: 100000\n", "", 0, "identity.max_svids_per_entry 100000 is out of range"},
		{"displaced set", "  max_displaced_per_entry: 40\n", "max_displaced_per_entry", 40, ""},
		{"displaced zero", "  max_displaced_per_entry: 0\n", "", 0, "identity.max_displaced_per_entry 0 is out of range: use between 1 and 1024 (default 16"},
		{"displaced absurd", "  max_displaced_per_entry: 5000\n", "", 0, "identity.max_displaced_per_entry 5000"},
		{"displacements set", "  max_displacements_per_agent_hour: 100\n", "max_displacements_per_agent_hour", 100, ""},
		{"displacements zero", "  max_displacements_per_agent_hour: 0\n", "", 0, "identity.max_displacements_per_agent_hour 0 is out of range: use between 1 and 3600 (default 32"},
		{"displacements negative", "  max_displacements_per_agent_hour: -5\n", "", 0, "identity.max_displacements_per_agent_hour -5"},
		{"displacements absurd", "  max_displacements_per_agent_hour: 1000000\n", "", 0, "identity.max_displacements_per_agent_hour 1000000"},
		{"jwts set", "  max_jwt_svids_per_entry: 256\n", "max_jwt_svids_per_entry", 256, ""},
		{"jwts zero", "  max_jwt_svids_per_entry: 0\n", "", 0, "identity.max_jwt_svids_per_entry 0 is out of range: use between 2 and 4096 (default 64"},
		{"jwts one", "  max_jwt_svids_per_entry: 1\n", "", 0, "identity.max_jwt_svids_per_entry 1"},
		{"jwts absurd", "  max_jwt_svids_per_entry: 99999\n", "", 0, "identity.max_jwt_svids_per_entry 99999"},
		{"agent jwts set", "  max_jwt_svids_per_agent: 300\n", "max_jwt_svids_per_agent", 300, ""},
		{"agent jwts highest", "  max_jwt_svids_per_agent: 8192\n", "max_jwt_svids_per_agent", 8192, ""},
		{"agent jwts zero", "  max_jwt_svids_per_agent: 0\n", "", 0, "identity.max_jwt_svids_per_agent 0 is out of range: use between 2 and 8192 (default 1024"},
		{"agent jwts negative", "  max_jwt_svids_per_agent: -3\n", "", 0, "identity.max_jwt_svids_per_agent -3"},
		{"agent jwts absurd", "  max_jwt_svids_per_agent: 30000\n", "", 0, "identity.max_jwt_svids_per_agent 30000 is out of range"},
		{"not a number", "  max_jwt_svids_per_entry: many\n", "", 0, "many"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(base + tc.yaml))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range c.Identity.IssueLimits() {
				w := want[l.Name]
				if l.Name == tc.field {
					w = tc.value
				}
				if l.Value() != w {
					t.Errorf("%s = %d, want %d", l.Name, l.Value(), w)
				}
			}
		})
	}
}

// TestIssueLimitDefaultsAreTheRegistrys: the defaults identity.max_*
// documents and validates are the ones the registry applies (its Max*
// constants), so a change to one side cannot leave the other behind.
func TestIssueLimitDefaultsAreTheRegistrys(t *testing.T) {
	want := map[string]int{
		"max_svids_per_entry":              registry.MaxIssuedPerEntry,
		"max_displaced_per_entry":          registry.MaxDisplacedPerEntry,
		"max_displacements_per_agent_hour": registry.MaxDisplacementsPerAgent,
		"max_jwt_svids_per_entry":          registry.MaxJWTPerEntry,
		"max_jwt_svids_per_agent":          registry.MaxJWTPerAgent,
	}
	limits := Identity{}.IssueLimits()
	if len(limits) != len(want) {
		t.Fatalf("%d issue limits, want %d: add the new one here", len(limits), len(want))
	}
	for _, l := range limits {
		if d, ok := want[l.Name]; !ok || l.Def != d {
			t.Errorf("identity.%s defaults to %d, the registry to %d (known: %v)", l.Name, l.Def, d, ok)
		}
	}
}
