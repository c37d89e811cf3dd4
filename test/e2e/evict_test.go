package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestEvictRevokesAtTheProxy runs the attack of a compromised node: a
// workload's SVID chain obtained through the node's agent is saved, the
// agent (node-1) is evicted with `ward agent evict`, and the saved chain
// (still unexpired) is replayed with `openssl s_client` into an inbound
// `ward proxy` on another node (fed by node-2's agent's policy socket).
// The proxy must deny it by the deny-list on its next connection.
func TestEvictRevokesAtTheProxy(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (it is in the test dependencies)")
	}
	sc := startPaymentsScenario(t)
	a, dir, inbound, logs := sc.addr, sc.dir, sc.inbound, sc.logs
	token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	ag := startAgentProc(t, sc.pub, sc.nodeAPI, sc.bundle, token)
	ag.WaitStatus("1 SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })

	// The workload's current SVID: what an attacker who stole it keeps.
	fetch := func() *x509svid.SVID { t.Helper(); return fetchX509SVID(t, ag.Socket) }
	old := fetch()
	if len(old.Certificates) < 2 {
		t.Fatalf("SVID chain has %d certificates, want leaf and intermediate", len(old.Certificates))
	}
	oldSerial := old.Certificates[0].SerialNumber.Text(16)
	stolen := stealSVID(t, dir, old, inbound, logs)
	replay, accessLine := stolen.replay, stolen.accessLine
	// Before the eviction the replayed chain is allowed (the attack works).
	stolen.waitAllowed("the eviction")

	out := MustWard(t, a, "", "agent", "evict", "spiffe://e2e.example.org/ward/agent/node-1")
	if !strings.Contains(out, "Revoked ") || strings.Contains(out, "Revoked 0 ") {
		t.Fatalf("`ward agent evict` does not say it revoked the agent's SVIDs:\n%s", out)
	}
	afterEvict := len(logs.String())
	// The deadline bounds the test only; it asserts no speed.
	deadline := time.Now().Add(60 * time.Second)
	var denied map[string]any
	for denied = accessLine("deny", afterEvict); denied == nil; denied = accessLine("deny", afterEvict) {
		if time.Now().After(deadline) {
			t.Fatalf("the evicted agent's workload SVID %s was not denied; proxy log:\n%s", oldSerial, Tail(logs.String(), 4000))
		}
		replay()
		time.Sleep(100 * time.Millisecond)
	}
	if denied["cause"] != "deny-list" {
		t.Fatalf("deny line does not say the deny-list refused it: %v", denied)
	}
	allows := countLines(logs.String(), oldSerial, "allow")
	replay()
	time.Sleep(200 * time.Millisecond)
	if n := countLines(logs.String(), oldSerial, "allow"); n != allows {
		t.Fatalf("old chain allowed again after the deny: %d allow lines, was %d", n, allows)
	}
}

// TestEvictRevokesJWTSVIDs runs the attack of a JWT-SVID taken off an
// evicted node: the payments workload's token minted through node-1's
// agent before `ward agent evict` validates on node-2's Workload API
// (ValidateJWTSVID) until the eviction, and is refused there after it
// (its jti on the deny-list that node-2's agent follows), while the token
// node-2's own workload got still validates. `ward agent evict` says how
// many JWT-SVIDs it revoked.
func TestEvictRevokesJWTSVIDs(t *testing.T) {
	sc := startPaymentsScenario(t)
	token := strings.TrimSpace(MustWard(t, sc.addr, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	ag := startAgentProc(t, sc.pub, sc.nodeAPI, sc.bundle, token)
	ag.WaitStatus("1 SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })
	stolen, jti := FetchJWTSVID(t, ag.Socket, "orders")
	kept, _ := FetchJWTSVID(t, sc.ag2.Socket, "orders")
	if len(jti) != 32 {
		t.Fatalf("JWT-SVID jti %q, want 128 bits in hex", jti)
	}
	for what, tok := range map[string]string{"node-1's": stolen, "node-2's": kept} {
		if err := ValidateJWTSVID(sc.ag2.Socket, tok, "orders"); err != nil {
			t.Fatalf("%s JWT-SVID before the eviction: %v", what, err)
		}
	}
	out := MustWard(t, sc.addr, "", "agent", "evict", "spiffe://e2e.example.org/ward/agent/node-1")
	if !strings.Contains(out, "Revoked 1 JWT-SVIDs") {
		t.Fatalf("`ward agent evict` does not say it revoked the JWT-SVID:\n%s", out)
	}
	WaitJWTSVIDRefused(t, sc.ag2.Socket, stolen, "orders", "node-1's JWT-SVID on node-2 after the eviction")
	if err := ValidateJWTSVID(sc.ag2.Socket, kept, "orders"); err != nil {
		t.Fatalf("node-2's own JWT-SVID after node-1's eviction: %v", err)
	}
	if !strings.Contains(MustWard(t, sc.addr, "", "policy", "show"), strings.TrimLeft(jti, "0")) { // listed normalized
		t.Fatalf("the deny-list does not name the jti %s", jti)
	}
}

// paymentsScenario is the stage of the node-compromise tests (evict,
// crash loop): an authority with its Node API, the CA bundle, an entry
// for spiffe://e2e.example.org/payments under node-1 (whose agent the test
// starts itself), node-2's agent with an identity of its own, a policy
// that lets payments connect to the payments service, and a real inbound
// `ward proxy` on node-2 (startPaymentsProxy).
type paymentsScenario struct {
	addr, dir, pub, bundle, nodeAPI string
	inbound                         string
	logs                            *syncbuf.Buffer
	ag2                             *AgentProc // node-2's agent
}

func startPaymentsScenario(t *testing.T) *paymentsScenario {
	t.Helper()
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
	// node-2 runs the proxy, with an identity of its own.
	pub2 := PublicDir(t)
	token2 := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-2", "-q"))
	MustWard(t, a, "", "entry", "create", "--spiffe-id", "spiffe://e2e.example.org/payments-api",
		"--parent", "spiffe://e2e.example.org/ward/agent/node-2", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	ag2 := startAgentProc(t, pub2, nodeAPI, bundle, token2)
	ag2.WaitStatus("1 SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal == Workload::"`+payments+`", action == Action::"connect", resource == Service::"payments");`), 0o600)
	MustWard(t, a, "", "policy", "apply", pol)
	// A real ward proxy in front of an app that accepts and discards.
	inbound, logs := startPaymentsProxy(t, dir, ag2.Socket, filepath.Join(pub2, "policy.sock"))
	return &paymentsScenario{addr: a, dir: dir, pub: pub, bundle: bundle, nodeAPI: nodeAPI, inbound: inbound, logs: logs, ag2: ag2}
}
