// In-process proxy tests: real proxies (client and server side), a real CA
// and real Workload API sockets (testutil/proxytest) and an echo app, all in
// this test binary over loopback, so they can reach into metrics, logs and
// rotations (docs/testing.md names the three kinds of whole-path tests).
package proxy_test

import (
	"bufio"
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/testutil/proxytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestAllowAndDeny: through a client proxy and the server proxy, the
// allowed workload reaches the app (which learns its SPIFFE ID from the
// PROXY v2 header); the denied one is closed before any app byte flows and
// the access log and metrics name the policy that denied it.
func TestAllowAndDeny(t *testing.T) {
	if os.Getenv("WARD_EXPECT_FIPS") == "1" && !fips140.Enabled() {
		t.Fatal("WARD_EXPECT_FIPS=1 but crypto/fips140 is not enabled")
	}
	e := newEnv(t)
	got, err := request(e.clientWeb, "hello")
	if err != nil {
		t.Fatalf("allowed client: %v", err)
	}
	if got != webID+" hello" {
		t.Fatalf("allowed client got %q, want the app to name %s", got, webID)
	}

	got, err = request(e.clientTool, "hello")
	if err == nil {
		t.Fatalf("denied client got a reply %q", got)
	}
	if n := e.app.count(toolID); n != 0 {
		t.Fatalf("app saw %d connections from the denied client", n)
	}
	waitFor(t, "access log line for the denied client", 10*time.Second, func() bool { return len(findLog(e.serverLog, "peer_id", toolID)) > 0 })
	l := findLog(e.serverLog, "peer_id", toolID)[0]
	if l["decision"] != "deny" || l["outcome"] != "denied" || fmt.Sprint(l["policies"]) != "[ops-may-not-connect]" || l["cause"] != "forbid" {
		t.Fatalf("denied access log line: %v", l)
	}
	if l["correlation_id"] == "" || l["policy_version"] != float64(1) {
		t.Fatalf("access log line lacks correlation id or policy version: %v", l)
	}
	waitFor(t, "access log line for the allowed client", 10*time.Second, func() bool { return len(findLog(e.serverLog, "peer_id", webID)) > 0 })
	a := findLog(e.serverLog, "peer_id", webID)[0]
	if a["decision"] != "allow" || fmt.Sprint(a["policies"]) != "[web-to-api]" || a["bytes_in"].(float64) < 6 || a["tls_version"] != "1.3" {
		t.Fatalf("allowed access log line: %v", a)
	}
	if v := metric(t, e.server, "ward_proxy_decisions_total", `result="deny"`, `cause="forbid"`); v != 1 {
		t.Fatalf("deny decisions = %v, want 1", v)
	}
	if v := metric(t, e.server, "ward_proxy_decisions_total", `result="allow"`); v != 1 {
		t.Fatalf("allow decisions = %v, want 1", v)
	}
	if v := metric(t, e.server, "ward_proxy_tls_handshakes_total", `version="1.3"`); v != 2 {
		t.Fatalf("TLS 1.3 handshakes = %v, want 2", v)
	}
	wantGroup := `group="X25519MLKEM768"`
	if v := metric(t, e.server, "ward_proxy_tls_handshakes_total", wantGroup); v != 2 {
		t.Fatalf("handshakes with %s = %v, want 2 (hybrid post-quantum key exchange must be on)", wantGroup, v)
	}
	if v := metric(t, e.server, "ward_proxy_svid_expiry_seconds"); v <= 0 {
		t.Fatalf("svid expiry = %v", v)
	}
	if v := metric(t, e.server, "ward_proxy_decision_seconds_count"); v != 2 {
		t.Fatalf("decision latency samples = %v", v)
	}
	if code, body := httpGetStatus(t, "http://"+e.server.Addr("admin").String()+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	waitFor(t, "bytes metric", 10*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_bytes_total", `direction="in"`) >= 6
	})
}

// TestFailClosed: with no valid policy the proxy denies everything and
// /readyz says why; a valid file and SIGHUP-style reload fix it; a later
// broken file keeps the last valid policy.
func TestFailClosed(t *testing.T) {
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.PolicyPollInterval = cfgDur(10 * time.Second) // only Reload picks up changes here
	}))
	// the env wrote a valid policy before start; break it and reload
	e.writePolicy(`permit (principal, action, resource`)
	e.server.Reload()
	waitFor(t, "load error counted", 10*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_policy_load_errors_total") == 1
	})
	if _, err := request(e.clientWeb, "still allowed by version 1"); err != nil {
		t.Fatalf("a broken file must leave the last valid policy in force: %v", err)
	}

	// a fresh proxy that never had a valid policy
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := &proxy.Config{
		WorkloadAPISocket: e.api.Addr, AdminAddress: "127.0.0.1:0", PolicyFiles: []string{e.policyDir},
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: e.app.l.Addr().String(), PeerIdentity: proxy.PeerIdentityProxyV2}},
	}
	log := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, cfg, proxy.WithAccessLog(log))
	code, body := httpGetStatus(t, "http://"+p.Addr("admin").String()+"/readyz")
	if code != 503 || !strings.Contains(body, "no valid policy") {
		t.Fatalf("/readyz = %d %q, want 503 naming the missing policy", code, body)
	}
	c2 := &proxy.Config{WorkloadAPISocket: e.web.Addr, Outbound: []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: p.Addr("api").String(), ServerID: apiID}}}
	cw, _ := startProxy(t, ctx, c2, proxy.WithAccessLog(io.Discard))
	if got, err := request(cw, "x"); err == nil {
		t.Fatalf("no policy: got %q, want the connection refused", got)
	}
	waitFor(t, "no-policy denial logged", 10*time.Second, func() bool { return len(findLog(log, "cause", "no-policy")) == 1 })

	e.writePolicy(basePolicy)
	p.Reload()
	waitFor(t, "ready after a valid policy", 10*time.Second, func() bool {
		code, _ := httpGetStatus(t, "http://"+p.Addr("admin").String()+"/readyz")
		return code == 200
	})
	if _, err := request(cw, "x"); err != nil {
		t.Fatalf("after reload: %v", err)
	}
}

// TestPolicyChangeClosesRunningClient: under load, a new policy version
// that forbids the client closes its open connection and refuses new ones
// within 2 s; then the deny-list does the same for a serial.
func TestPolicyChangeClosesRunningClient(t *testing.T) {
	for _, tc := range []struct {
		name  string
		apply func(e *env)
	}{
		{"policy", func(e *env) {
			e.writePolicy(basePolicy + `
@id("lockdown-web")
forbid (principal == Workload::"spiffe://prod.example/ns/shop/web", action, resource);
`)
		}},
		{"deny-list id", func(e *env) { e.writeDeny(`{"spiffe_ids": ["` + webID + `"]}`) }},
		{"deny-list serial", func(e *env) { e.writeDeny(`{"serials": ["` + e.web.Serial().Text(16) + `"]}`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c, r, err := dialVia(e.clientWeb)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := roundTrip(c, r, "before"); err != nil {
				t.Fatal(err)
			}
			// sustained load on new connections while the change lands
			var stop atomic.Bool
			var okAfter atomic.Int64
			var changedAt atomic.Int64
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load() && i < 100000; i++ {
					if _, err := request(e.clientWeb, "load"); err == nil && changedAt.Load() != 0 &&
						time.Since(time.Unix(0, changedAt.Load())) > 2*time.Second {
						okAfter.Add(1)
					}
				}
			}()
			time.Sleep(50 * time.Millisecond)
			changedAt.Store(time.Now().UnixNano())
			tc.apply(e)
			// the open connection must be closed within 2 s
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = r.ReadString('\n')
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("open connection still open 2 s after the policy change")
			}
			stop.Store(true)
			wg.Wait()
			if okAfter.Load() != 0 {
				t.Fatalf("%d new connections succeeded more than 2 s after the change", okAfter.Load())
			}
			if _, err := request(e.clientWeb, "after"); err == nil {
				t.Fatal("a new connection succeeded after the change")
			}
			if v := metric(t, e.server, "ward_proxy_connections_closed_by_policy_total"); v < 1 {
				t.Fatalf("closed-by-policy = %v", v)
			}
			waitFor(t, "closed_by_policy in access log", 10*time.Second, func() bool {
				return len(findLog(e.serverLog, "outcome", "closed_by_policy")) >= 1
			})
			l := findLog(e.serverLog, "outcome", "closed_by_policy")[0]
			if l["policy_version"] != float64(2) {
				t.Fatalf("closed_by_policy line: %v", l)
			}
		})
	}
}

// TestDryRun: a dry-run forbid lets the traffic through and is counted and
// logged separately.
func TestDryRun(t *testing.T) {
	e := newEnv(t)
	e.writePolicy(basePolicy + `
@id("canary-no-web")
@dryrun("true")
forbid (principal == Workload::"spiffe://prod.example/ns/shop/web", action, resource);
`)
	e.server.Reload()
	waitFor(t, "policy version 2", 10*time.Second, func() bool { v, _ := e.server.Engine().Status(); return v == 2 })
	for i := 0; i < 5; i++ {
		if _, err := request(e.clientWeb, "canary"); err != nil {
			t.Fatalf("dry-run blocked traffic: %v", err)
		}
	}
	if v := metric(t, e.server, "ward_proxy_dry_run_decisions_total", `result="would_deny"`); v != 5 {
		t.Fatalf("dry-run would_deny = %v, want 5", v)
	}
	if v := metric(t, e.server, "ward_proxy_decisions_total", `result="deny"`); v != 0 {
		t.Fatalf("enforced denials = %v, want 0", v)
	}
	waitFor(t, "dry-run in the access log", 10*time.Second, func() bool {
		for _, l := range findLog(e.serverLog, "peer_id", webID) {
			if fmt.Sprint(l["dry_run_denials"]) == "[canary-no-web]" && l["decision"] == "allow" {
				return true
			}
		}
		return false
	})
}

// TestRotationsUnderLoad: 100 SVID rotations (short TTLs) of the server and
// the client, then an intermediate rotation, pushed through the Workload
// API while requests run on new connections and one long-lived connection:
// zero failed requests, and each rotation is seen in use.
func TestRotationsUnderLoad(t *testing.T) {
	e := newEnv(t, withTTL(2*time.Minute))
	long, longR, err := dialVia(e.clientWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	var (
		stop     atomic.Bool
		fails    atomic.Int64
		oks      atomic.Int64
		firstErr atomic.Value
	)
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 1000000; i++ {
				var err error
				if w == 0 {
					_, err = request(e.clientWeb, "r")
				} else {
					_, err = roundTrip(long, longR, "l")
				}
				if err != nil {
					fails.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					oks.Add(1)
				}
			}
		}(w)
	}
	// waitServing waits until the server proxy's handshakes use serial.
	seenIn := func(log *syncbuf.Buffer, serial string) bool { return log.Contains(`"peer_serial":"` + serial + `"`) }
	progress := func(what string) {
		t.Helper()
		n := oks.Load()
		waitFor(t, what, 20*time.Second, func() bool { return oks.Load() >= n+3 || fails.Load() > 0 })
		if fails.Load() > 0 {
			t.Fatalf("%s: %d failed requests; first: %v", what, fails.Load(), firstErr.Load())
		}
	}
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		w := e.web
		if i%2 == 1 {
			w = e.api
		}
		s, err := w.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		log, who := e.serverLog, "client"
		if w == e.api {
			log, who = e.clientLog, "server"
		}
		waitFor(t, fmt.Sprintf("rotation %d: new %s SVID in use", i, who), 20*time.Second, func() bool { return seenIn(log, s.Text(16)) })
		progress(fmt.Sprintf("rotation %d", i))
	}
	if err := e.auth.CA.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*proxytest.Workload{e.api, e.web, e.tool} {
		if err := w.RefreshBundle(); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s, sa := e.web.Serial().Text(16), e.api.Serial().Text(16)
	waitFor(t, "SVIDs from the new intermediate in use", 20*time.Second, func() bool {
		return seenIn(e.serverLog, s) && seenIn(e.clientLog, sa)
	})
	progress("intermediate rotation")
	progress("after intermediate rotation")
	stop.Store(true)
	wg.Wait()
	if f := fails.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed; first: %v", f, f+oks.Load(), firstErr.Load())
	}
	t.Logf("%d requests (new connection each + one long-lived connection) across 100 SVID rotations and an intermediate rotation, 0 failures", oks.Load())
}

// TestDrain: on shutdown the listener closes, /readyz reports draining, an
// open connection keeps working until it ends, then Run returns.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	c, r, err := dialVia(e.clientWeb)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, r, "before"); err != nil {
		t.Fatal(err)
	}
	admin := e.server.Addr("admin").String()
	e.stopServer()
	waitFor(t, "readyz draining", 10*time.Second, func() bool {
		code, body := httpGetStatus(t, "http://"+admin+"/readyz")
		return code == 503 && strings.Contains(body, "draining")
	})
	if _, err := net.Dial("tcp", e.server.Addr("api").String()); err == nil {
		// the listener is closed: a dial may still race the close, but a
		// handshake must not be served
		if _, err := request(e.clientWeb, "new"); err == nil {
			t.Fatal("a new connection was served while draining")
		}
	}
	if got, err := roundTrip(c, r, "during drain"); err != nil || got != webID+" during drain" {
		t.Fatalf("open connection during drain: %q %v", got, err)
	}
	select {
	case <-e.serverDone:
		t.Fatal("Run returned while a connection was open")
	default:
	}
	c.Close()
	select {
	case err := <-e.serverDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after the last connection closed")
	}
}

// TestMaxConnections: connections over the limit are refused and counted.
func TestMaxConnections(t *testing.T) {
	e := newEnv(t, withConfig(func(c *proxy.Config) { c.MaxConnections = 1 }))
	c, r, err := dialVia(e.clientWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, r, "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := request(e.clientWeb, "two"); err == nil {
		t.Fatal("second connection served over max_connections=1")
	}
	if v := metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="max_connections"`); v < 1 {
		t.Fatalf("rejected = %v", v)
	}
	if v := metric(t, e.server, "ward_proxy_connections_open", `direction="inbound"`); v != 1 {
		t.Fatalf("open = %v, want 1", v)
	}
}

// TestIdleTimeout: a connection without traffic for idle_timeout is closed.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, withConfig(func(c *proxy.Config) { c.IdleTimeout = cfgDur(300 * time.Millisecond) }))
	c, r, err := dialVia(e.clientWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, r, "one"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection not closed: %v", err)
	}
	waitFor(t, "idle in access log", 10*time.Second, func() bool { return len(findLog(e.serverLog, "error", "idle timeout")) == 1 })
}

// TestUnixSockets: the inbound listener forwards to an app on a unix
// socket, and the outbound listener accepts the app on a unix socket.
func TestUnixSockets(t *testing.T) {
	dir, err := os.MkdirTemp("", "wu")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	appSock := dir + "/app.sock"
	l, err := net.Listen("unix", appSock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Inbound[0].Forward = "unix://" + appSock
		c.Inbound[0].PeerIdentity = proxy.PeerIdentityNone
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outSock := dir + "/out.sock"
	startProxy(t, ctx, &proxy.Config{WorkloadAPISocket: e.web.Addr, Outbound: []proxy.Outbound{{Name: "to-api",
		Listen: "unix://" + outSock, Remote: e.server.Addr("api").String(), ServerID: apiID}}}, proxy.WithAccessLog(io.Discard))
	c, err := net.Dial("unix", outSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, bufio.NewReader(c), "over unix sockets"); err != nil || got != "over unix sockets" {
		t.Fatalf("got %q, %v", got, err)
	}
}
