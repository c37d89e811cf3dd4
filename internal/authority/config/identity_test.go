package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
