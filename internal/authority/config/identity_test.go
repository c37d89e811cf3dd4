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
