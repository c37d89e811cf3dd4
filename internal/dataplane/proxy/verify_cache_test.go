package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestCachedPeerStillRefusedWhenRevokedOrDenied runs the attack on the
// peer-chain cache (verify.go): a workload whose chain the server proxy
// has verified (and cached) keeps connecting after its certificate serial
// or its SPIFFE ID is put on the deny-list, or after a policy forbids it.
// Each new connection is decided again and refused; lifting the deny-list
// lets the same (still cached) chain in again.
func TestCachedPeerStillRefusedWhenRevokedOrDenied(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 2; i++ {
		if _, err := request(e.clientWeb, "warm"); err != nil {
			t.Fatalf("precondition, allowed: %v", err)
		}
	}
	if v := metric(t, e.server, "ward_proxy_peer_chain_verifications_total", `result="cached"`); v < 1 {
		t.Fatalf("the second connection of the same chain was not served from the cache (cached = %v)", v)
	}
	refused := func(what string) {
		t.Helper()
		if got, err := request(e.clientWeb, what); err == nil {
			t.Fatalf("%s: a cached peer was let through: %q", what, got)
		}
	}
	waitVersion := func(what string, cond func(*policy.Set) bool) {
		t.Helper()
		waitFor(t, what, 10*time.Second, func() bool { s := e.server.Engine().Current(); return s != nil && cond(s) })
	}

	e.writeDeny(`{"serials": ["` + policy.SerialHex(e.web.Serial()) + `"]}`)
	waitVersion("serial on the deny-list", func(s *policy.Set) bool { return len(s.DenyList().Serials) == 1 })
	refused("revoked serial")

	e.writeDeny(`{"spiffe_ids": ["` + webID + `"]}`)
	waitVersion("ID on the deny-list", func(s *policy.Set) bool { return len(s.DenyList().SPIFFEIDs) == 1 })
	refused("denied SPIFFE ID")

	e.writeDeny(`{}`)
	waitVersion("deny-list lifted", func(s *policy.Set) bool { return len(s.DenyList().SPIFFEIDs)+len(s.DenyList().Serials) == 0 })
	if _, err := request(e.clientWeb, "lifted"); err != nil {
		t.Fatalf("after the deny-list was lifted: %v", err)
	}

	v, _ := e.server.Engine().Status()
	e.writePolicy(basePolicy + `
@id("web-forbidden")
forbid (principal == Workload::"` + webID + `", action == Action::"connect", resource);
`)
	waitFor(t, "forbid in force", 10*time.Second, func() bool { n, _ := e.server.Engine().Status(); return n > v })
	refused("forbidden by policy")
	// Each line is written as its connection ends, possibly after the
	// client saw the close: wait (bounded) for the third.
	waitFor(t, "three denied lines in the server's access log", 10*time.Second, func() bool {
		return len(findLog(e.serverLog, "outcome", "denied")) >= 3
	})
}

// TestOutboundCachedServerRefusedOnceTainted: a client proxy that has
// verified (and cached) the server's chain refuses the server at the next
// handshake once its deny-list taints the server's intermediate.
func TestOutboundCachedServerRefusedOnceTainted(t *testing.T) {
	e := newEnv(t)
	k := activeIntermediateKeyID(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deny := e.dir + "/client-deny.json"
	writeAtomic(t, deny, `{}`)
	cfg := &proxy.Config{
		WorkloadAPISocket: e.web.Addr, PolicyFiles: []string{e.policyDir}, DenyListFile: deny, AdminAddress: "127.0.0.1:0",
		PolicyPollInterval: cfgDur(100 * time.Millisecond),
		Outbound:           []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: e.server.Addr("api").String(), ServerID: apiID}},
	}
	log := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, cfg, proxy.WithAccessLog(log))
	waitFor(t, "client policy loaded", 10*time.Second, func() bool { _, ok := p.Engine().Status(); return ok })
	for i := 0; i < 2; i++ {
		if _, err := request(p, "warm"); err != nil {
			t.Fatalf("precondition: %v", err)
		}
	}
	if v := metric(t, p, "ward_proxy_peer_chain_verifications_total", `result="cached"`); v < 1 {
		t.Fatalf("the server's chain was not served from the client's cache (cached = %v)", v)
	}
	writeAtomic(t, deny, `{"tainted_keys": ["`+k+`"]}`)
	waitFor(t, "client deny-list taints the key", 10*time.Second, func() bool {
		return p.Engine().Current() != nil && p.Engine().Current().TaintedKey([]string{k}) != ""
	})
	if got, err := request(p, "x"); err == nil {
		t.Fatalf("outbound to a cached server chained through tainted %s succeeded: %q", k, got)
	}
	waitFor(t, "outbound log line", 10*time.Second, func() bool { return log.Contains("tainted CA key " + k) })
}
