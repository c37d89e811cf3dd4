package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/node/wgnet"
)

// TestAgentStatusTunnelTable: `ward agent status` prints the tunnel table
// from the agent's /status (and /status as it is with --json).
func TestAgentStatusTunnelTable(t *testing.T) {
	st := agent.Status{TrustDomain: "prod.example.org", AgentID: "spiffe://prod.example.org/ward/agent/node-1", SecondsSinceLastSync: 2,
		Network: &agent.NetworkStatus{Interface: "ward0", Address: "10.250.1.1", Strict: true, Registered: true, PublicKey: bytes.Repeat([]byte{1}, 32),
			Rotations: 1, Handshakes: 3, Peers: []agent.Tunnel{
				{PeerStats: wgnet.PeerStats{ID: "spiffe://prod.example.org/ward/agent/node-2", PublicKey: bytes.Repeat([]byte{2}, 32), Endpoint: "192.0.2.2:51820",
					AllowedIPs: []string{"10.250.2.1/32"}, LastHandshake: time.Now(), RxBytes: 1234, TxBytes: 5678}, HandshakeAgeSeconds: 4},
				{PeerStats: wgnet.PeerStats{ID: "spiffe://prod.example.org/ward/agent/node-2", PublicKey: bytes.Repeat([]byte{3}, 32), Endpoint: "192.0.2.2:51820"}, HandshakeAgeSeconds: -1},
			}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	run := func(args ...string) (string, error) {
		root := NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	out, err := run("agent", "status", "--address", addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ward0 10.250.1.1 (strict)", "registered true, 1 rotations, 3 handshakes", "PEER", "192.0.2.2:51820",
		"10.250.2.1/32", "4s ago", "1234", "5678", "(next key)", "never"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if out, err := run("agent", "status", "--address", addr, "--json"); err != nil || !strings.Contains(out, `"network"`) {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if _, err := run("agent", "status"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("no address: %v", err)
	}
}
