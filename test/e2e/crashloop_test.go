package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	sc := startPaymentsScenario(t)
	a, dir, pub, inbound, logs := sc.addr, sc.dir, sc.pub, sc.inbound, sc.logs

	var first, newest *stolen
	from := 0 // the proxy's log after the first SVID was allowed
	for i := range 10 {
		token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
		os.RemoveAll(filepath.Join(pub, "agent-data")) // a crash loop without the data directory
		ag := startAgentProc(t, pub, sc.nodeAPI, sc.bundle, token)
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
