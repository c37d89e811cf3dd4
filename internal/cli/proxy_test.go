package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/proxytest"
)

// TestProxyCLI runs `ward proxy --config` as a process: a client with an
// allowed SVID gets through; SIGHUP applies a policy that forbids it, which
// closes its open connection and refuses new ones; SIGTERM drains and exits 0.
func TestProxyCLI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "wc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	auth, err := proxytest.NewAuthority(ctx, dir, "prod.example")
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	api, err := auth.AddWorkload(ctx, "/ns/shop/api", 0)
	if err != nil {
		t.Fatal(err)
	}
	web, err := auth.AddWorkload(ctx, "/ns/shop/web", 0)
	if err != nil {
		t.Fatal(err)
	}
	// the app: echoes lines
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	policyFile := filepath.Join(dir, "p.cedar")
	allow := `@id("web-to-api") permit (principal == Workload::"spiffe://prod.example/ns/shop/web", action == Action::"connect", resource == Service::"api");`
	os.WriteFile(policyFile, []byte(allow), 0o600)
	inbound := netutil.FreeLoopbackAddr(t)
	admin := filepath.Join(dir, "admin.sock")
	cfg := fmt.Sprintf(`workload_api_socket: %s
admin_address: unix://%s
policy_files: [%s]
policy_poll_interval: 10s
drain_timeout: 1s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
`, api.Addr, admin, policyFile, inbound, app.Addr())
	cfgFile := filepath.Join(dir, "proxy.yaml")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)

	// a bad config is refused with a clear error
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(cfg+"bogus: 1\n"), 0o600)
	badCmd := exec.Command(mustExe(t), "-test.run=^TestReexecWard$", "--", "proxy", "--config", bad)
	badCmd.Env = append(os.Environ(), reexecEnv)
	if out, err := badCmd.CombinedOutput(); err == nil || !strings.Contains(string(out), `unknown field "bogus"`) {
		t.Fatalf("bad config: %v: %s", err, out)
	}

	w := startWard(t, "proxy", "--config", cfgFile)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", admin)
	}}}
	ready := func() (int, string) {
		resp, err := hc.Get("http://admin/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if err := proxytest.WaitFor(20*time.Second, func() bool { c, _ := ready(); return c == 200 }); err != nil {
		c, body := ready()
		t.Fatalf("proxy not ready: %d %s\n%s", c, body, w.output())
	}

	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(web.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	tlsCfg := tlsconfig.MTLSClientConfig(xs, xs, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://prod.example/ns/shop/api")))
	tlsCfg.MinVersion = tls.VersionTLS13
	echo := func(c net.Conn, r *bufio.Reader, msg string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintln(c, msg); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err == nil && got != msg+"\n" {
			err = fmt.Errorf("echo %q", got)
		}
		return err
	}
	c, err := tls.Dial("tcp", inbound, tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if err := echo(c, r, "hello"); err != nil {
		t.Fatalf("allowed client: %v\n%s", err, w.output())
	}

	os.WriteFile(policyFile, []byte(allow+"\n@id(\"lockdown\") forbid (principal, action, resource);"), 0o600)
	w.cmd.Process.Signal(syscall.SIGHUP)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("open connection not closed within 2 s of SIGHUP: %v\n%s", err, w.output())
	}
	if c2, err := tls.Dial("tcp", inbound, tlsCfg); err == nil {
		if err := echo(c2, bufio.NewReader(c2), "again"); err == nil {
			t.Fatal("new connection served after the forbid")
		}
		c2.Close()
	}
	// The proxy writes the access log line as the connection ends, which
	// can be just after the client saw it close: wait for it (bounded).
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(w.output(), `"policies":["lockdown"]`); {
		if time.Now().After(deadline) {
			t.Fatalf("access log does not name the forbid:\n%s", w.output())
		}
		time.Sleep(20 * time.Millisecond)
	}

	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-w.done:
		w.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, w.output())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", w.output())
	}
	if !strings.Contains(w.output(), "draining") {
		t.Fatalf("no drain logged:\n%s", w.output())
	}
}
