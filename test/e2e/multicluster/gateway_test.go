package multicluster

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestCrossClusterThroughGateway: two federated clusters; A's client
// reaches B's service only through B's `ward gateway` process, which holds
// no key: A's outbound proxy sets the gateway SNI (gateway_service) and
// requires B's api ID, B's inbound proxy (accept_proxy_v2) verifies A's
// client ID and decides by B's policy. The gateway logs the route and says
// it cannot know the peer; on SIGTERM it stops accepting, fails /readyz,
// lets the open connection finish and exits 0.
func TestCrossClusterThroughGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities, two agents, two proxies and a gateway")
	}
	a := startCluster(t, "a.example")
	b := startCluster(t, "b.example")
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))
	clientID, apiID := "spiffe://a.example/client", "spiffe://b.example/api"
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	a.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", "spiffe://a.example/ward/agent/node-1", "--selector", uid, "--federates-with", "b.example")
	b.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", "spiffe://b.example/ward/agent/node-1", "--selector", uid, "--federates-with", "a.example")
	dir := t.TempDir()
	polA, polB := filepath.Join(dir, "a.cedar"), filepath.Join(dir, "b.cedar")
	os.WriteFile(polA, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource);`), 0o600)
	os.WriteFile(polB, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" && principal.path == "/client" };`), 0o600)
	a.ward(t, "policy", "apply", polA)
	b.ward(t, "policy", "apply", polB)
	agA, agB := a.agent(t), b.agent(t)
	agA.WaitStatus("1 SVID", func(st e2e.AgentStatus) bool { return st.SVIDs == 1 })
	agB.WaitStatus("1 SVID", func(st e2e.AgentStatus) bool { return st.SVIDs == 1 })

	app := echoServer(t, "")
	inbound, gw, gwAdmin, outbound := netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t)
	logB := crossProxy(t, nil, dir, "b", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
    service: {name: api, port: 8443}
    accept_proxy_v2: true
`, agB.Socket, filepath.Join(b.pub, "policy.sock"), inbound, app))
	gwCfg := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(gwCfg, []byte(fmt.Sprintf(`listen: %s
trust_domain: b.example
admin_address: %s
access_log: stdout
drain_timeout: 1m
routes:
  - service: api
    forward: %s
    proxy_protocol: v2
`, gw, gwAdmin, inbound)), 0o600)
	if out, err := exec.Command(e2e.WardBin, "gateway", "--config", gwCfg, "--check").CombinedOutput(); err != nil || !strings.Contains(string(out), "api.b.example.ward -> "+inbound) {
		t.Fatalf("ward gateway --check: %v\n%s", err, out)
	}
	gcmd := exec.Command(e2e.WardBin, "gateway", "--config", gwCfg)
	logGW := &syncbuf.Buffer{}
	gcmd.Stdout, gcmd.Stderr = logGW, logGW
	if err := gcmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2e.StopProcess(gcmd) })
	logA := crossProxy(t, nil, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
outbound:
  - name: to-b-api
    listen: %s
    remote: %s
    server_id: %s
    gateway_service: api
`, agA.Socket, filepath.Join(a.pub, "policy.sock"), outbound, gw, apiID))

	var err error
	deadline := time.Now().Add(60 * time.Second)
	for {
		var c interface{ Close() error }
		if c, _, err = crossRound(outbound); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no round trip through B's gateway: %v\nproxy A:\n%s\ngateway:\n%s\nproxy B:\n%s", err,
				e2e.Tail(logA.String(), 2000), e2e.Tail(logGW.String(), 2000), e2e.Tail(logB.String(), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitUntil(t, "the access log lines of the round trip", func() bool {
		return strings.Contains(logGW.String(), `"outcome":"closed"`) && strings.Contains(logB.String(), `"decision":"allow"`)
	})
	if !strings.Contains(logB.String(), `"peer_id":"`+clientID+`"`) {
		t.Errorf("B's access log does not name A's client:\n%s", e2e.Tail(logB.String(), 2000))
	}
	for _, want := range []string{`"sni":"api.b.example.ward"`, `"outcome":"closed"`, `"peer_identity":"unknown to the gateway`} {
		if !strings.Contains(logGW.String(), want) {
			t.Errorf("gateway log lacks %s:\n%s", want, e2e.Tail(logGW.String(), 2000))
		}
	}
	for _, want := range []string{`"via_gateway":"127.0.0.1:`, `"gateway_id":"`, `"peer_trust_domain":"a.example"`, `"decision":"allow"`} {
		if !strings.Contains(logB.String(), want) {
			t.Errorf("B's access log lacks %s:\n%s", want, e2e.Tail(logB.String(), 2000))
		}
	}

	// SIGTERM with a connection open: drain.
	conn, r, err := crossRound(outbound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := gcmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "/readyz 503 while draining", func() bool {
		resp, err := http.Get("http://" + gwAdmin + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 503 && strings.Contains(string(b), "draining")
	})
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "during drain\n")
	if line, err := r.ReadString('\n'); err != nil || line != "echo during drain\n" {
		t.Fatalf("the open connection during the drain: %q %v", line, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- gcmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("the gateway exited (%v) with a connection open and drain_timeout 1m", err)
	case <-time.After(300 * time.Millisecond):
	}
	conn.Close()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the gateway exited with %v after the drain\n%s", err, e2e.Tail(logGW.String(), 2000))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the gateway did not exit after its last connection closed")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
