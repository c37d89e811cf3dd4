package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
)

// TestCrashLoopingAgentDisplacesAtTheProxy runs an honest agent that
// crash-loops without its data directory (no cache: every start attests
// with a new join token and signs its workload's SVID anew) ten times
// within the SVIDs' lifetime. Every start gets the workload's SVID (the
// ninth was refused before, until the first SVIDs expired); the two
// oldest are displaced to the deny-list, so the first one, replayed into
// a real `ward proxy` on another node, is denied by the deny-list while
// the newest is allowed.
func TestCrashLoopingAgentDisplacesAtTheProxy(t *testing.T) {
	if _, err := os.Stat("/usr/bin/openssl"); err != nil {
		if _, err := os.Stat("/bin/openssl"); err != nil {
			t.Skip("openssl not installed (it is in the test dependencies)")
		}
	}
	dir := t.TempDir()
	nodeAPI := netutil.FreeLoopbackAddr(t)
	s := StartServer(t, dir, WriteConfig(t, dir, fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI)))
	s.InitAndUnseal()
	a := s.Addr
	pub := PublicDir(t)
	bundle := filepath.Join(pub, "bundle.pem")
	MustWard(t, a, "", "ca", "bundle", "-o", bundle)
	const payments = "spiffe://e2e.example.org/payments"
	MustWard(t, a, "", "entry", "create", "--spiffe-id", payments,
		"--parent", "spiffe://e2e.example.org/ward/agent/node-1", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	pub2 := PublicDir(t)
	token2 := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-2", "-q"))
	MustWard(t, a, "", "entry", "create", "--spiffe-id", "spiffe://e2e.example.org/payments-api",
		"--parent", "spiffe://e2e.example.org/ward/agent/node-2", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	ag2 := startAgentProc(t, pub2, nodeAPI, bundle, token2)
	ag2.WaitStatus("1 SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal == Workload::"`+payments+`", action == Action::"connect", resource == Service::"payments");`), 0o600)
	MustWard(t, a, "", "policy", "apply", pol)
	inbound, logs := startPaymentsProxy(t, dir, ag2.Socket, filepath.Join(pub2, "policy.sock"))

	var first, newest *stolen
	from := 0 // the proxy's log after the first SVID was allowed
	for i := range 10 {
		token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
		os.RemoveAll(filepath.Join(pub, "agent-data")) // a crash loop without the data directory
		ag := startAgentProc(t, pub, nodeAPI, bundle, token)
		ag.WaitStatus(fmt.Sprintf("restart %d: 1 SVID", i), func(st AgentStatus) bool { return st.SVIDs == 1 })
		sv := fetchX509SVID(t, ag.Socket)
		d := filepath.Join(dir, fmt.Sprintf("start-%d", i))
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		newest = stealSVID(t, d, sv, inbound, logs)
		if i == 0 {
			first = newest
			first.waitAllowed("the restarts")
			from = len(logs.String())
		}
		ag.stop()
	}
	if first.serial == newest.serial {
		t.Fatal("the restarts did not sign new SVIDs")
	}
	// The deadline bounds the test only; it asserts no speed.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if d := first.accessLine("deny", from); d != nil {
			if d["cause"] != "deny-list" {
				t.Fatalf("deny line does not say the deny-list refused it: %v", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the displaced SVID %s was not denied; proxy log:\n%s", first.serial, Tail(logs.String(), 4000))
		}
		first.replay()
		time.Sleep(100 * time.Millisecond)
	}
	newest.waitAllowed("(the newest SVID, not displaced)")
}
