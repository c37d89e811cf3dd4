package proxy

import (
	"strings"
	"testing"
)

func TestOutboundServiceConfig(t *testing.T) {
	base := "workload_api_socket: unix:///run/ward/agent.sock\npolicy_socket: unix:///run/ward/policy.sock\noutbound:\n  - name: to-pay\n    listen: 127.0.0.1:15001\n"
	c, err := ParseConfig([]byte(base + "    service: payments@b.example\n    failover: [c.example, d.example]\n    failover_hold: 3s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Outbound[0].Service != "payments@b.example" || len(c.Outbound[0].Failover) != 2 {
		t.Fatalf("%+v", c.Outbound[0])
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"with remote", base + "    service: payments@b.example\n    remote: gw:1\n", "excludes remote"},
		{"with server_id", base + "    service: payments@b.example\n    server_id: spiffe://b.example/x\n", "excludes remote, server_id"},
		{"no trust domain", base + "    service: payments\n", "name@trust domain"},
		{"bad name", base + "    service: Pay@b.example\n", "service name"},
		{"failover twice", base + "    service: p@b.example\n    failover: [c.example, c.example]\n", "listed twice"},
		{"failover to itself", base + "    service: p@b.example\n    failover: [b.example]\n", "listed twice"},
		{"bad failover", base + "    service: p@b.example\n    failover: [\"C!\"]\n", "not a trust domain"},
		{"failover without service", base + "    remote: db:1\n    server_id: spiffe://b.example/db\n    failover: [c.example]\n", "go with service"},
		{"no policy socket", strings.Replace(base, "policy_socket: unix:///run/ward/policy.sock\n", "", 1) + "    service: p@b.example\n", "needs policy_socket"},
	} {
		if _, err := ParseConfig([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
