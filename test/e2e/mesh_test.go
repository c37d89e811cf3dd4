package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestPolicyReachesTheProxyThroughTheAgent runs the real chain: `ward
// policy apply` on the authority → the agent (over the mTLS Node API) →
// `ward proxy` (over the agent's policy socket), then `ward revoke`, and
// checks that the proxy's engine follows each version, and that a proxy
// started while the authority is down still gets the agent's cached copy.
func TestPolicyReachesTheProxyThroughTheAgent(t *testing.T) {
	dir := t.TempDir()
	nodeAPI := netutil.FreeLoopbackAddr(t)
	s := StartServer(t, dir, WriteConfig(t, dir, fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI)))
	shares := s.InitAndUnseal()
	a := s.Addr
	pub := PublicDir(t)
	bundle := filepath.Join(pub, "bundle.pem")
	MustWard(t, a, "", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	MustWard(t, a, "", "entry", "create", "--spiffe-id", "spiffe://e2e.example.org/payments",
		"--parent", "spiffe://e2e.example.org/ward/agent/node-1", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	ag := startAgentProc(t, pub, nodeAPI, bundle, token)
	ag.WaitStatus("1 SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })

	admin := netutil.FreeLoopbackAddr(t)
	proxyCfg := filepath.Join(dir, "proxy.yaml")
	os.WriteFile(proxyCfg, []byte(fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
admin_address: %s
inbound:
  - name: payments
    listen: %s
    forward: %s
`, ag.Socket, filepath.Join(pub, "policy.sock"), admin, netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t))), 0o600)
	startProxy := func() *exec.Cmd {
		cmd := exec.Command(WardBin, "proxy", "--config", proxyCfg)
		logs := &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { StopProcess(cmd) })
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
	MustWard(t, a, "", "policy", "apply", pol)
	waitVersion("1", 5*time.Second)
	if got := httpStatusOf("http://" + admin + "/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz with policy = %d", got)
	}
	MustWard(t, a, "", "revoke", "--spiffe-id", "spiffe://e2e.example.org/frontend")
	waitVersion("2", 2*time.Second)

	// Authority down: a proxy (re)started now gets version 2 from the
	// agent's cache.
	s.Stop()
	StopProcess(proxy)
	startProxy()
	waitVersion("2", 10*time.Second)
	// The authority returns: the next version flows again.
	s.Start()
	s.Unseal(shares[:3])
	MustWard(t, a, "", "revoke", "--remove", "--spiffe-id", "spiffe://e2e.example.org/frontend")
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
