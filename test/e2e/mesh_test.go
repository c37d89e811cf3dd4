package e2e

import (
	"fmt"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPolicyReachesTheProxyThroughTheAgent runs the real chain: `ward
// policy apply` on the authority → the agent (over the mTLS Node API) →
// `ward proxy` (over the agent's policy socket), then `ward revoke`, and
// checks that the proxy's engine follows each version, and that a proxy
// started while the authority is down still gets the agent's cached copy.
func TestPolicyReachesTheProxyThroughTheAgent(t *testing.T) {
	dir := t.TempDir()
	nodeAPI := netutil.FreeLoopbackAddr(t)
	s := startServer(t, dir, writeConfig(t, dir, fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI)))
	shares := s.initAndUnseal()
	a := s.addr
	pub := publicDir(t)
	bundle := filepath.Join(pub, "bundle.pem")
	mustWard(t, a, "", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(mustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	mustWard(t, a, "", "entry", "create", "--spiffe-id", "spiffe://e2e.example.org/payments",
		"--parent", "spiffe://e2e.example.org/ward/agent/node-1", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	ag := startAgentProc(t, pub, nodeAPI, bundle, token)
	ag.waitStatus("1 SVID", func(st agentStatus) bool { return st.SVIDs == 1 })

	admin := netutil.FreeLoopbackAddr(t)
	proxyCfg := filepath.Join(dir, "proxy.yaml")
	os.WriteFile(proxyCfg, []byte(fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
admin_address: %s
inbound:
  - name: payments
    listen: %s
    forward: %s
`, ag.socket, filepath.Join(pub, "policy.sock"), admin, netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t))), 0o600)
	startProxy := func() *exec.Cmd {
		cmd := exec.Command(wardBin, "proxy", "--config", proxyCfg)
		logs := &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopProcess(cmd) })
		return cmd
	}
	proxy := startProxy()
	policyVersion := func() string {
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "ward_proxy_policy_version "); ok {
				return v
			}
		}
		return ""
	}
	waitVersion := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for policyVersion() != want {
			if time.Now().After(deadline) {
				t.Fatalf("proxy policy version is %q, want %s within %s", policyVersion(), want, within)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// No policy yet: the proxy is up but not ready (fail closed).
	deadline := time.Now().Add(30 * time.Second)
	for httpStatusOf("http://"+admin+"/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("proxy never reported not-ready without policy")
		}
		time.Sleep(50 * time.Millisecond)
	}
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal == Workload::"spiffe://e2e.example.org/frontend", action == Action::"connect", resource == Service::"payments");`), 0o600)
	mustWard(t, a, "", "policy", "apply", pol)
	waitVersion("1", 5*time.Second)
	if got := httpStatusOf("http://" + admin + "/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz with policy = %d", got)
	}
	mustWard(t, a, "", "revoke", "--spiffe-id", "spiffe://e2e.example.org/frontend")
	waitVersion("2", 2*time.Second)

	// Authority down: a proxy (re)started now gets version 2 from the
	// agent's cache.
	s.stop()
	stopProcess(proxy)
	startProxy()
	waitVersion("2", 10*time.Second)
	// The authority returns: the next version flows again.
	s.start()
	s.unseal(shares[:3])
	mustWard(t, a, "", "revoke", "--remove", "--spiffe-id", "spiffe://e2e.example.org/frontend")
	waitVersion("3", 15*time.Second)
}

func httpStatusOf(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
