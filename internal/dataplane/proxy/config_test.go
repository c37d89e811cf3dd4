package proxy

import (
	"strings"
	"testing"
	"time"
)

const goodConfig = `
workload_api_socket: unix:///run/ward/agent.sock
admin_address: 127.0.0.1:9901
policy_files: [/etc/ward/policy]
inbound:
  - name: api
    listen: 127.0.0.1:8443
    forward: 127.0.0.1:8080
    peer_identity: proxy-v2
    service: {classification: internal}
outbound:
  - name: to-db
    listen: 127.0.0.1:15432
    remote: db.internal:8443
    server_id: spiffe://prod.example/ns/data/db
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inbound[0].Service.Name != "api" || c.Inbound[0].Service.Port != 8443 || c.TLS.MinVersion != "1.3" ||
		time.Duration(c.PolicyPollInterval) != DefaultPolicyPoll || c.MaxConnections != DefaultMaxConnections || c.AccessLog != "stderr" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if !c.TLS.Resumption() || time.Duration(c.TLS.SessionLifetime) != DefaultSessionLifetime || c.TLS.SessionCacheSize != DefaultSessionCacheSize {
		t.Fatalf("session defaults not applied: %+v", c.TLS)
	}
	if off, err := ParseConfig([]byte(goodConfig + "\ntls: {session_resumption: false}")); err != nil || off.TLS.Resumption() {
		t.Fatalf("session_resumption: false: %v %+v", err, off)
	}
	for _, tc := range []struct {
		name, edit, want string
	}{
		{"unknown field", "\nlisten_everywhere: true", `unknown field "listen_everywhere" at the top level`},
		{"non-loopback listen", "", ""},
		{"bad tls version", "\ntls: {min_version: \"1.1\"}", `tls.min_version "1.1"`},
		{"poll too slow", "\npolicy_poll_interval: 1m", "policy_poll_interval 1m0s must be between"},
		{"bad duration", "\nidle_timeout: soon", `bad duration "soon"`},
		{"second document", "\n---\nfoo: 1", "more than one YAML document"},
		{"zero max", "\nmax_connections: -1", "max_connections -1"},
		{"session lifetime too long", "\ntls: {session_lifetime: 2h}", "tls.session_lifetime 2h0m0s must be positive and at most 1h0m0s"},
		{"session cache too big", "\ntls: {session_cache_size: 100000}", "tls.session_cache_size 100000 must be between 1 and 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "" {
				return
			}
			_, err := ParseConfig([]byte(goodConfig + tc.edit))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"empty", "", "file is empty"},
		{"no socket", "inbound: []", "workload_api_socket is required"},
		{"no listeners", "workload_api_socket: /s", "no listeners"},
		{"inbound without policy", "workload_api_socket: /s\ninbound: [{name: a, listen: '127.0.0.1:1', forward: '127.0.0.1:2'}]", "need policy"},
		{"public listen", "workload_api_socket: /s\npolicy_files: [p]\ninbound: [{name: a, listen: '0.0.0.0:1', forward: '127.0.0.1:2'}]", "not a loopback address"},
		{"duplicate names", "workload_api_socket: /s\npolicy_files: [p]\ninbound: [{name: a, listen: '127.0.0.1:1', forward: '127.0.0.1:2'}, {name: a, listen: '127.0.0.1:3', forward: '127.0.0.1:2'}]", `name "a" is used twice`},
		{"same address", "workload_api_socket: /s\npolicy_files: [p]\ninbound: [{name: a, listen: '127.0.0.1:1', forward: '127.0.0.1:2'}, {name: b, listen: '127.0.0.1:1', forward: '127.0.0.1:2'}]", "used by two listeners"},
		{"relative unix", "workload_api_socket: /s\npolicy_files: [p]\ninbound: [{name: a, listen: 'unix://x.sock', forward: '127.0.0.1:2'}]", "absolute path"},
		{"bad mode", "workload_api_socket: /s\npolicy_files: [p]\ninbound: [{name: a, listen: '127.0.0.1:1', forward: '127.0.0.1:2', peer_identity: cookie}]", `peer_identity "cookie"`},
		{"bad server id", "workload_api_socket: /s\noutbound: [{name: a, listen: '127.0.0.1:1', remote: 'x:1', server_id: 'https://x'}]", "server_id"},
		{"bad remote", "workload_api_socket: /s\noutbound: [{name: a, listen: '127.0.0.1:1', remote: 'x', server_id: 'spiffe://td/x'}]", "remote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	ok := "workload_api_socket: /s\nallow_non_loopback: true\npolicy_files: [p]\ninbound: [{name: a, listen: '0.0.0.0:8443', forward: 'unix:///run/app.sock'}]"
	if _, err := ParseConfig([]byte(ok)); err != nil {
		t.Fatalf("allow_non_loopback: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("inbound: [{name: a}]"))
	f.Add([]byte("idle_timeout: 3d\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("ParseConfig accepted a config Validate rejects: %v", err)
			}
		}
	})
}

// TestOutboundGatewayService: gateway_service sets the SNI the gateway
// routes by, in the trust domain of server_id; it excludes server_name.
func TestOutboundGatewayService(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig + "    gateway_service: db\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sni, err := c.Outbound[0].SNI(); err != nil || sni != "db.prod.example.ward" {
		t.Fatalf("SNI %q %v", sni, err)
	}
	for edit, want := range map[string]string{
		"    gateway_service: db\n    server_name: db.internal\n": "server_name and gateway_service exclude each other",
		"    gateway_service: Db_1\n":                             `outbound[0] (to-db).gateway_service: service name "Db_1"`,
	} {
		if _, err := ParseConfig([]byte(goodConfig + edit)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", edit, err, want)
		}
	}
	c, err = ParseConfig([]byte(strings.Replace(goodConfig, "    peer_identity: proxy-v2\n", "    peer_identity: proxy-v2\n    accept_proxy_v2: true\n", 1)))
	if err != nil || !c.Inbound[0].AcceptProxyV2 {
		t.Fatalf("accept_proxy_v2: %v", err)
	}
}
