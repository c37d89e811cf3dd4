package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// countingSource counts the trust bundle look-ups of a proxy: each
// verification of a peer's chain (x509svid.Verify) makes one.
type countingSource struct {
	*gsw.X509Source
	bundleLookups atomic.Int64
}

func (s *countingSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.bundleLookups.Add(1)
	return s.X509Source.GetX509BundleForTrustDomain(td)
}

// TestInboundVerifiesPeerChainOnce: the handshake verifies the peer's
// chain (client's at the server proxy, server's at the client proxy) and
// the tainted-key check reuses the chains it built; no second
// x509svid.Verify per connection (the 18% BenchmarkNewConnection
// regression). Fails if any code path verifies the peer chain again.
func TestInboundVerifiesPeerChainOnce(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	counting := func(addr string) *countingSource {
		xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(addr)))
		if err != nil {
			t.Fatalf("workload API source %s: %v", addr, err)
		}
		t.Cleanup(func() { xs.Close() })
		return &countingSource{X509Source: xs}
	}
	src, csrc := counting(e.api.Addr), counting(e.web.Addr)
	cfg := &proxy.Config{
		WorkloadAPISocket: e.api.Addr, // validated; WithX509Source replaces it
		PolicyFiles:       []string{e.policyDir}, DenyListFile: e.denyFile, PolicyPollInterval: cfgDur(100 * time.Millisecond),
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: e.app.l.Addr().String(), PeerIdentity: proxy.PeerIdentityProxyV2,
			Service: proxy.Service{Name: "api", Port: 8443, Classification: "internal"}}},
	}
	srv, _ := startProxy(t, ctx, cfg, proxy.WithX509Source(src), proxy.WithAccessLog(io.Discard))
	waitFor(t, "server policy loaded", 10*time.Second, func() bool { _, ok := srv.Engine().Status(); return ok })
	client, _ := startProxy(t, ctx, &proxy.Config{WorkloadAPISocket: e.web.Addr,
		Outbound: []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: srv.Addr("api").String(), ServerID: apiID}}},
		proxy.WithX509Source(csrc), proxy.WithAccessLog(io.Discard))
	const n = 5
	before, cbefore := src.bundleLookups.Load(), csrc.bundleLookups.Load()
	for i := 0; i < n; i++ {
		if got, err := request(client, "x"); err != nil || !strings.HasPrefix(got, webID) {
			t.Fatalf("request %d through the counting server proxy: %q, %v", i, got, err)
		}
	}
	if got := src.bundleLookups.Load() - before; got != n {
		t.Fatalf("%d inbound connections looked the trust bundle up %d times; want %d (one chain verification per handshake)", n, got, n)
	}
	if got := csrc.bundleLookups.Load() - cbefore; got != n {
		t.Fatalf("%d outbound connections looked the trust bundle up %d times; want %d (one chain verification per handshake)", n, got, n)
	}
}

// TestOpenOutboundClosedWhenServerKeyTainted runs the attack on an open
// outbound connection: a client proxy keeps a connection to a server
// whose SVID chains through intermediate K; K is then tainted in a new
// policy version of the CLIENT proxy (the server proxy's own deny-list
// stays empty, so only the client side can close it). The connection is
// closed, and the client's access log says closed_by_policy, naming K.
func TestOpenOutboundClosedWhenServerKeyTainted(t *testing.T) {
	e := newEnv(t)
	k := activeIntermediateKeyID(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deny := e.dir + "/client-deny.json"
	writeAtomic(t, deny, `{}`)
	cfg := &proxy.Config{
		WorkloadAPISocket: e.web.Addr, PolicyFiles: []string{e.policyDir}, DenyListFile: deny,
		PolicyPollInterval: cfgDur(100 * time.Millisecond),
		Outbound:           []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: e.server.Addr("api").String(), ServerID: apiID}},
	}
	log := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, cfg, proxy.WithAccessLog(log))
	waitFor(t, "client policy loaded", 10*time.Second, func() bool { _, ok := p.Engine().Status(); return ok })
	v0, _ := p.Engine().Status()
	c, r, err := dialVia(p)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, r, "before"); err != nil {
		t.Fatalf("precondition, outbound allowed before the taint: %v", err)
	}

	writeAtomic(t, deny, `{"tainted_keys": ["`+strings.ToUpper(k)+`"]}`)
	waitFor(t, "client policy with the taint", 10*time.Second, func() bool { v, _ := p.Engine().Status(); return v > v0 })

	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = r.ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("open outbound connection to a server chained through the tainted intermediate still open 10 s after the client's deny-list listed it")
	}
	waitFor(t, "client closed_by_policy line", 10*time.Second, func() bool { return len(findLog(log, "outcome", "closed_by_policy")) > 0 })
	l := findLog(log, "outcome", "closed_by_policy")[0]
	if l["direction"] != "outbound" || l["decision"] != "deny" || l["cause"] != "tainted-ca-key" ||
		!strings.Contains(fmt.Sprint(l["policies"]), policy.ReasonTaintedKeyPrefix+k) || l["peer_id"] != apiID {
		t.Fatalf("closed_by_policy line does not name the tainted server key: %v", l)
	}
	// The server proxy did not close it: its deny-list never listed K.
	if got := findLog(e.serverLog, "outcome", "closed_by_policy"); len(got) != 0 {
		t.Fatalf("server proxy closed the connection (test setup leaks the taint to the server): %v", got)
	}
}
