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
)

// waitingProxy runs a proxy on socket (an outbound listener only) that
// says after 50ms what keeps it from an SVID; it returns its log and the
// proxy.
func waitingProxy(t *testing.T, ctx context.Context, socket string, mutate func(*proxy.Config)) (*proxy.Proxy, *syncBuffer, chan error) {
	t.Helper()
	cfg := &proxy.Config{WorkloadAPISocket: socket, AdminAddress: "127.0.0.1:0",
		Outbound: []proxy.Outbound{{Name: "out", Listen: "127.0.0.1:0", Remote: "127.0.0.1:1", ServerID: apiID}}}
	if mutate != nil {
		mutate(cfg)
	}
	logs := &syncBuffer{}
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
		waitFor(t, "the missing socket in the log", 10*time.Second, func() bool { return logs.contains("no Workload API socket at " + missing) })
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
			return logs.contains("the agent refused this proxy") && logs.contains("test:socket")
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
			return logs.contains("no X509-SVID with spiffe_id "+want) && logs.contains("it offers: spiffe://prod.example/ns/shop/one")
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
		waitFor(t, "the identity log line", 10*time.Second, func() bool { return logs.contains("spiffe_id=" + want) })
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
		waitFor(t, "the identity log line", 10*time.Second, func() bool { return logs.contains("spiffe_id=spiffe://prod.example/ns/shop/four") })
	})
}
