package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

func activeIntermediateKeyID(t *testing.T, e *env) string {
	t.Helper()
	inter, err := e.auth.CA.ActiveIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	kid, err := keyutil.CAKeyID(inter.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

// TestTaintedIntermediateRefusedAndOpenConnectionClosed runs the red
// team's attack: a workload whose SVID chains through intermediate K keeps
// using it after K is tainted. Once a policy version lists K, the open
// connection is closed and a new handshake with the old chain is denied,
// and the access log names K; a re-issued SVID from the new intermediate
// connects again.
func TestTaintedIntermediateRefusedAndOpenConnectionClosed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	k := activeIntermediateKeyID(t, e)
	c, r, err := dialVia(e.clientWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, r, "before"); err != nil {
		t.Fatalf("precondition, allowed before the taint: %v", err)
	}
	// The authority taints K (it stops signing and a new intermediate is
	// active) and the deny-list gains K as a new policy version.
	if err := e.auth.CA.Taint(ctx, k); err != nil {
		t.Fatal(err)
	}
	e.writeDeny(`{"tainted_keys": ["` + strings.ToUpper(k) + `"]}`)

	// The open connection is closed (re-decided on the new version).
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = r.ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("open connection through the tainted intermediate still open 10 s after the deny-list listed it")
	}
	waitFor(t, "closed_by_policy line", 10*time.Second, func() bool { return len(findLog(e.serverLog, "outcome", "closed_by_policy")) > 0 })
	l := findLog(e.serverLog, "outcome", "closed_by_policy")[0]
	if l["cause"] != "tainted-ca-key" || !strings.Contains(fmt.Sprint(l["policies"]), policy.ReasonTaintedKeyPrefix+k) {
		t.Fatalf("closed_by_policy line does not name the tainted key: %v", l)
	}

	// A new handshake with the old chain (the client still holds it) is
	// denied, and the log says why.
	if got, err := request(e.clientWeb, "replay"); err == nil {
		t.Fatalf("old chain through tainted %s was let through: %q", k, got)
	}
	waitFor(t, "denied line", 10*time.Second, func() bool { return len(findLog(e.serverLog, "outcome", "denied")) > 0 })
	d := findLog(e.serverLog, "outcome", "denied")[0]
	if d["decision"] != "deny" || d["cause"] != "tainted-ca-key" || d["peer_id"] != webID ||
		!strings.Contains(fmt.Sprint(d["policies"]), policy.ReasonTaintedKeyPrefix+k) {
		t.Fatalf("denied line does not name the tainted key: %v", d)
	}
	if v := metric(t, e.server, "ward_proxy_decisions_total", `result="deny"`, `cause="tainted-ca-key"`); v < 1 {
		t.Fatalf("tainted-key denials = %v", v)
	}

	// Re-issued SVIDs (server and client) chain through the new
	// intermediate and are allowed again.
	if k2 := activeIntermediateKeyID(t, e); k2 == k {
		t.Fatal("taint did not activate a new intermediate")
	}
	if _, err := e.api.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.web.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	var last error
	waitFor(t, "re-issued SVID allowed", 10*time.Second, func() bool {
		_, last = request(e.clientWeb, "reissued")
		return last == nil
	})
}

// TestOutboundRefusesServerThroughTaintedKey: a client proxy with a policy
// whose deny-list lists the server's intermediate refuses the server.
func TestOutboundRefusesServerThroughTaintedKey(t *testing.T) {
	e := newEnv(t)
	k := activeIntermediateKeyID(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deny := e.dir + "/client-deny.json"
	writeAtomic(t, deny, `{"tainted_keys": ["`+k+`"]}`)
	cfg := &proxy.Config{
		WorkloadAPISocket: e.web.Addr, PolicyFiles: []string{e.policyDir}, DenyListFile: deny,
		Outbound: []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: e.server.Addr("api").String(), ServerID: apiID}},
	}
	log := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, cfg, proxy.WithAccessLog(log))
	waitFor(t, "client policy loaded", 10*time.Second, func() bool { _, ok := p.Engine().Status(); return ok })
	if got, err := request(p, "x"); err == nil {
		t.Fatalf("outbound to a server chained through tainted %s succeeded: %q", k, got)
	}
	waitFor(t, "outbound log line", 10*time.Second, func() bool { return log.Contains("tainted CA key " + k) })
	// Without the taint the same client connects (the refusal is the taint's).
	writeAtomic(t, deny, `{}`)
	waitFor(t, "client deny-list emptied", 10*time.Second, func() bool {
		return p.Engine().Current() != nil && p.Engine().Current().TaintedKey([]string{k}) == ""
	})
	if _, err := request(p, "y"); err != nil {
		t.Fatalf("outbound without taint: %v", err)
	}
}
