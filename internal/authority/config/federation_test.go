package config

import (
	"strings"
	"testing"
)

func TestFederationConfig(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /tmp/x\nfederation:\n"
	peer := "  trust_domains:\n  - trust_domain: b.example\n    endpoint: https://127.0.0.1:8444\n"
	cases := []struct {
		name, yaml, err string
	}{
		{"endpoint only", "  bundle_endpoint:\n    address: 127.0.0.1:8444\n", ""},
		{"peer with bundle", peer + "    bundle_file: /etc/ward/b.json\n", ""},
		{"web peer", peer + "    profile: https_web\n", ""},
		{"peer without bundle", peer, "bundle_file is required"},
		{"own trust domain", "  trust_domains:\n  - trust_domain: example.org\n    endpoint: https://x\n    bundle_file: /b\n", "own trust domain"},
		{"twice", peer + "    bundle_file: /b\n" + "  - trust_domain: b.example\n    endpoint: https://y\n    bundle_file: /b\n", "declared twice"},
		{"http endpoint", "  trust_domains:\n  - trust_domain: b.example\n    endpoint: http://x\n    bundle_file: /b\n", "https:// URL"},
		{"endpoint id elsewhere", peer + "    bundle_file: /b\n    endpoint_id: spiffe://c.example/s\n", "endpoint_id"},
		{"web with id", peer + "    profile: https_web\n    endpoint_id: spiffe://b.example/s\n", "takes none"},
		{"bad profile", peer + "    profile: ftp\n", "profile"},
		{"allowed gateways", peer + "    bundle_file: /b\n    allowed_gateways: [10.20.0.0/16, \"*.b.example:15443\", \"gw.b.example:*\"]\n", ""},
		{"allowed gateways everywhere", peer + "    bundle_file: /b\n    allowed_gateways: [0.0.0.0/0]\n", "trust_domains[0].allowed_gateways"},
		{"allowed gateway without port", peer + "    bundle_file: /b\n    allowed_gateways: [gw.b.example]\n", "host:port"},
		{"network endpoint bound", peer + "    bundle_file: /b\n    network: true\n    network_endpoint_cidrs: [198.51.100.0/24]\n", ""},
		{"network endpoint bound without network", peer + "    bundle_file: /b\n    network_endpoint_cidrs: [198.51.100.0/24]\n", "network: true"},
		{"network endpoint bound everywhere", peer + "    bundle_file: /b\n    network: true\n    network_endpoint_cidrs: [0.0.0.0/0]\n", "network_endpoint_cidrs"},
		{"network endpoint bound not a prefix", peer + "    bundle_file: /b\n    network: true\n    network_endpoint_cidrs: [198.51.100.1]\n", "network_endpoint_cidrs"},
		{"web address without cert", "  bundle_endpoint:\n    web_address: 127.0.0.1:443\n", "cert_file"},
		{"refresh bounds", "  refresh_min: 2h\n  refresh_max: 1h\n", "refresh_min"},
		{"unknown field", "  bundle_endpoints: {}\n", "bundle_endpoints"},
		{"witness interval", "  witness_interval: 30s\n", ""},
		{"witness interval too short", "  witness_interval: 100ms\n", "witness_interval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(base + tc.yaml))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want it to contain %q", err, tc.err)
			}
		})
	}
}
