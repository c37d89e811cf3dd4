package proxy_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/testutil/proxytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// waitingProxy runs a proxy on socket (an outbound listener only) that
// says after 50ms what keeps it from an SVID; it returns its log and the
// proxy.
func waitingProxy(t *testing.T, ctx context.Context, socket string, mutate func(*proxy.Config)) (*proxy.Proxy, *syncbuf.Buffer, chan error) {
	t.Helper()
	cfg := &proxy.Config{WorkloadAPISocket: socket, AdminAddress: "127.0.0.1:0",
		Outbound: []proxy.Outbound{{Name: "out", Listen: "127.0.0.1:0", Remote: "127.0.0.1:1", ServerID: apiID}}}
	if mutate != nil {
		mutate(cfg)
	}
	logs := &syncbuf.Buffer{}
	p, err := proxy.New(cfg, proxy.WithLogger(slog.New(slog.NewTextHandler(logs, nil))), proxy.WithAccessLog(logs),
		proxy.WithWaitDiagnosis(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return p, logs, done
}

// readyz returns the proxy's /readyz status and body once the admin
// endpoint listens.
func readyz(t *testing.T, p *proxy.Proxy) (int, string) {
	t.Helper()
	waitFor(t, "the admin endpoint", 10*time.Second, func() bool { return p.Addr("admin") != nil })
	return httpGetStatus(t, "http://"+p.Addr("admin").String()+"/readyz")
}

// TestWaitingProxySaysWhatIsMissing: a proxy without an SVID does not wait
// in silence: it names the missing socket, the agent's refusal (with the
// selectors it attested as) or the SVIDs on offer when none fits its
// spiffe_id, in its log and in /readyz.
func TestWaitingProxySaysWhatIsMissing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "wpw")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	auth, err := proxytest.NewAuthority(ctx, dir, tdName)
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()

	t.Run("no socket", func(t *testing.T) {
		missing := filepath.Join(dir, "nothing-here.sock")
		p, logs, _ := waitingProxy(t, ctx, missing, nil)
		waitFor(t, "the missing socket in the log", 10*time.Second, func() bool { return logs.Contains("no Workload API socket at " + missing) })
		code, body := readyz(t, p)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "no Workload API socket") {
			t.Fatalf("/readyz: %d %q", code, body)
		}
	})

	t.Run("agent refuses", func(t *testing.T) {
		w, err := auth.AddWorkload(ctx, "/ns/shop/web", 0)
		if err != nil {
			t.Fatal(err)
		}
		w.SetRefused(true)
		p, logs, done := waitingProxy(t, ctx, w.Addr, nil)
		waitFor(t, "the agent's refusal in the log", 10*time.Second, func() bool {
			return logs.Contains("the agent refused this proxy") && logs.Contains("test:socket")
		})
		code, body := readyz(t, p)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "no registration entry") {
			t.Fatalf("/readyz: %d %q", code, body)
		}
		w.SetRefused(false) // an entry is registered: the proxy starts
		select {
		case <-p.Started():
		case err := <-done:
			t.Fatalf("proxy stopped: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("proxy did not start once the agent served it")
		}
	})

	t.Run("no SVID with the configured spiffe_id", func(t *testing.T) {
		w, err := auth.AddWorkload(ctx, "/ns/shop/one", 0)
		if err != nil {
			t.Fatal(err)
		}
		want := "spiffe://prod.example/ns/shop/two"
		p, logs, done := waitingProxy(t, ctx, w.Addr, func(c *proxy.Config) { c.SPIFFEID = want })
		waitFor(t, "the SVIDs on offer in the log", 10*time.Second, func() bool {
			return logs.Contains("no X509-SVID with spiffe_id "+want) && logs.Contains("it offers: spiffe://prod.example/ns/shop/one")
		})
		if code, body := readyz(t, p); code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
			t.Fatalf("/readyz: %d %q", code, body)
		}
		if _, err := w.AddIdentity(ctx, "/ns/shop/two", "second"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Started():
		case err := <-done:
			t.Fatalf("proxy stopped: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("proxy did not start once its SVID was offered")
		}
		waitFor(t, "the identity log line", 10*time.Second, func() bool { return logs.Contains("spiffe_id=" + want) })
	})

	t.Run("pick by hint", func(t *testing.T) {
		w, err := auth.AddWorkload(ctx, "/ns/shop/three", 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.AddIdentity(ctx, "/ns/shop/four", "admin"); err != nil {
			t.Fatal(err)
		}
		p, logs, done := waitingProxy(t, ctx, w.Addr, func(c *proxy.Config) { c.SVIDHint = "admin" })
		select {
		case <-p.Started():
		case err := <-done:
			t.Fatalf("proxy stopped: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("proxy did not start")
		}
		waitFor(t, "the identity log line", 10*time.Second, func() bool { return logs.Contains("spiffe_id=spiffe://prod.example/ns/shop/four") })
	})
}

// TestMissingPolicyFiles: `--check` (Config.CheckPolicyFiles) refuses
// policy_files that do not exist; at runtime the proxy says so once (not
// at every poll), without claiming a previous policy, and /readyz names
// the error. An outbound-only proxy's /readyz says what it is ready for.
func TestMissingPolicyFiles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "wpm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	missing := filepath.Join(dir, "nonexistent")
	cfg := &proxy.Config{WorkloadAPISocket: "/run/ward/agent.sock", PolicyFiles: []string{missing},
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: "127.0.0.1:1"}}}
	if err := cfg.CheckPolicyFiles(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("CheckPolicyFiles with a missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o700)
	cfg.PolicyFiles = []string{empty}
	if err := cfg.CheckPolicyFiles(); err == nil || !strings.Contains(err.Error(), "no .cedar file") {
		t.Fatalf("CheckPolicyFiles with an empty directory: %v", err)
	}
	os.WriteFile(filepath.Join(empty, "bad.cedar"), []byte("permit (principal, action, resource) when { nope };"), 0o600)
	if err := cfg.CheckPolicyFiles(); err == nil || !strings.Contains(err.Error(), "bad.cedar") {
		t.Fatalf("CheckPolicyFiles with a bad policy: %v", err)
	}

	auth, err := proxytest.NewAuthority(ctx, dir, tdName)
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	w, err := auth.AddWorkload(ctx, "/ns/shop/api", 0)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, &proxy.Config{WorkloadAPISocket: w.Addr, AdminAddress: "127.0.0.1:0",
		PolicyFiles: []string{missing}, PolicyPollInterval: cfgDur(50 * time.Millisecond),
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: "127.0.0.1:1"}}},
		proxy.WithLogger(slog.New(slog.NewTextHandler(logs, nil))), proxy.WithAccessLog(logs))
	waitFor(t, "several failed policy loads", 10*time.Second, func() bool {
		return metric(t, p, "ward_proxy_policy_load_errors_total") >= 4
	})
	out := logs.String()
	if n := strings.Count(out, "no policy could be loaded"); n != 1 {
		t.Errorf("the missing policy was logged %d times, want once:\n%s", n, out)
	}
	if strings.Contains(out, "previous policy stays in force") {
		t.Errorf("claims a previous policy though none was ever loaded:\n%s", out)
	}
	if code, body := readyz(t, p); code != http.StatusServiceUnavailable || !strings.Contains(body, missing) {
		t.Errorf("/readyz: %d %q", code, body)
	}

	out2, _ := startProxy(t, ctx, &proxy.Config{WorkloadAPISocket: w.Addr, AdminAddress: "127.0.0.1:0",
		Outbound: []proxy.Outbound{{Name: "out", Listen: "127.0.0.1:0", Remote: "127.0.0.1:1", ServerID: apiID}}})
	if code, body := readyz(t, out2); code != http.StatusOK || !strings.Contains(body, "outbound: 1 listener(s) with an X509-SVID") ||
		strings.Contains(body, "loaded=") {
		t.Errorf("outbound-only /readyz: %d %q", code, body)
	}
}

// TestUnreachablePolicySocketSaidOnce: a proxy whose policy_socket is
// missing says so once (the retries are debug), and /readyz names it.
func TestUnreachablePolicySocketSaidOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "wps")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	auth, err := proxytest.NewAuthority(ctx, dir, tdName)
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	w, err := auth.AddWorkload(ctx, "/ns/shop/api", 0)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	p, _ := startProxy(t, ctx, &proxy.Config{WorkloadAPISocket: w.Addr, AdminAddress: "127.0.0.1:0",
		PolicySocket: "unix://" + filepath.Join(dir, "no-policy.sock"),
		Inbound:      []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: "127.0.0.1:1"}}},
		proxy.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))), proxy.WithAccessLog(logs))
	waitFor(t, "several retries", 20*time.Second, func() bool {
		return strings.Count(logs.String(), "policy stream still interrupted") >= 2
	})
	if n := strings.Count(logs.String(), "policy stream interrupted"); n != 1 {
		t.Errorf("the unreachable policy socket was logged %d times at warn level, want once:\n%s", n, logs.String())
	}
	if code, body := readyz(t, p); code != http.StatusServiceUnavailable || !strings.Contains(body, "policy_socket: ") {
		t.Errorf("/readyz: %d %q", code, body)
	}
}
