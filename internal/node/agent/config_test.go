package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodConfig = `trust_domain: prod.example.org
server_address: 127.0.0.1:8443
trust_bundle_path: /etc/ward/bundle.pem
join_token: abc
socket_path: /run/ward/agent.sock
data_dir: /var/lib/ward-agent
`

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.SyncInterval) != DefaultSyncInterval || c.LogLevel != "info" || c.ServerSPIFFEID != "spiffe://prod.example.org/ward/server" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	without := func(field string) string {
		var out []string
		for _, l := range strings.Split(goodConfig, "\n") {
			if !strings.HasPrefix(l, field+":") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", "", "file is empty"},
		{"not yaml", "trust_domain: [", "invalid YAML"},
		{"unknown field", goodConfig + "sync_intervall: 5s\n", `unknown field "sync_intervall" at the top level: did you mean "sync_interval"?`},
		{"two documents", goodConfig + "---\ntrust_domain: x\n", "more than one YAML document"},
		{"no trust domain", without("trust_domain"), "trust_domain is required"},
		{"trust domain URL", strings.Replace(goodConfig, "prod.example.org", "spiffe://prod.example.org", 1), "not a trust domain name"},
		{"trust domain upper", strings.Replace(goodConfig, "prod.example.org", "Prod.example.org", 1), "not a trust domain name"},
		{"no server", without("server_address"), "server_address is required"},
		{"server without port", strings.Replace(goodConfig, "127.0.0.1:8443", "127.0.0.1", 1), "use host:port"},
		{"server URL", strings.Replace(goodConfig, "127.0.0.1:8443", "https://h:1", 1), "use host:port"},
		{"server id outside", goodConfig + "server_spiffe_id: spiffe://other.org/ward/server\n", "outside trust domain"},
		{"server id bad", goodConfig + "server_spiffe_id: nope\n", "server_spiffe_id"},
		{"no bundle", without("trust_bundle_path"), "trust_bundle_path is required"},
		{"no attestation", without("join_token"), "no node attestation configured"},
		{"token and file", goodConfig + "join_token_file: /t\n", "exclude each other"},
		{"token and x509pop", goodConfig + "x509pop: {cert_path: /c, key_path: /k}\n", "not both"},
		{"token and psat", goodConfig + "k8s_psat: {cluster: c1, token_path: /t}\n", "not both"},
		{"psat half", without("join_token") + "\nk8s_psat: {cluster: c1}\n", "k8s_psat needs cluster"},
		{"k8s attestor plain http", goodConfig + "k8s_workload_attestor: {node_name: n, apiserver: http://h:6443}\n", "https://"},
		{"x509pop half", without("join_token") + "\nx509pop: {cert_path: /c}\n", "both cert_path and key_path"},
		{"no socket", without("socket_path"), "socket_path is required"},
		{"relative socket", strings.Replace(goodConfig, "/run/ward/agent.sock", "agent.sock", 1), "must be absolute"},
		{"long socket", strings.Replace(goodConfig, "/run/ward/agent.sock", "/"+strings.Repeat("s", 120), 1), "longer than a unix socket path"},
		{"no data dir", without("data_dir"), "data_dir is required"},
		{"bad duration", goodConfig + "sync_interval: soon\n", "bad duration"},
		{"tiny interval", goodConfig + "sync_interval: 1ms\n", "out of range"},
		{"bad level", goodConfig + "log_level: loud\n", "log_level"},
		{"bad health", goodConfig + "health_address: nope\n", "health_address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestLoadConfigNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want the path", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte(goodConfig + "x509pop: {cert_path: /c, key_path: /k}\n"))
	f.Add([]byte("sync_interval: 3d\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("ParseConfig accepted a config Validate rejects: %v", err)
			}
			_ = c.trustDomain()
			_ = c.serverID()
		}
	})
}
