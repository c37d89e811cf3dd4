package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/proxy"
)

// needTool skips when a binary is absent, or fails under CI=true.
func needTool(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found and CI=true: apt-get install %s", bin, pkg)
		}
		t.Skipf("%s not found: apt-get install %s", bin, pkg)
	}
	return p
}

// httpApp answers every request with the identity headers it received.
func httpApp(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "peer=%s correlation=%d\n", strings.Join(r.Header.Values(proxy.HeaderPeerID), ","), len(r.Header.Get(proxy.HeaderCorrelationID)))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestCurl: curl (HTTP app behind an http-header listener) without a
// client certificate fails; with the allowed SVID it succeeds and the app
// sees the verified SPIFFE ID, never a caller-supplied one; with the denied
// SVID it is refused.
func TestCurl(t *testing.T) {
	curl := needTool(t, "curl", "curl")
	app := httpApp(t)
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Inbound[0].PeerIdentity = proxy.PeerIdentityHTTPHeader
		c.Inbound[0].Forward = app
	}))
	files := t.TempDir()
	webCrt, webKey, bundle, err := e.web.WriteFiles(files, "web")
	if err != nil {
		t.Fatal(err)
	}
	toolCrt, toolKey, _, err := e.tool.WriteFiles(files, "tool")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(e.server.Addr("api").String())
	url := "https://" + apiDNS + ":" + port + "/"
	run := func(extra ...string) (string, error) {
		args := append([]string{"-sS", "--max-time", "10", "--resolve", apiDNS + ":" + port + ":127.0.0.1", "--cacert", bundle,
			"-H", proxy.HeaderPeerID + ": spiffe://evil.example/spoofed"}, extra...)
		out, err := exec.Command(curl, append(args, url)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run(); err == nil {
		t.Fatalf("curl without a client certificate succeeded: %s", out)
	}
	out, err := run("--cert", webCrt, "--key", webKey)
	if err != nil {
		t.Fatalf("curl with the allowed SVID: %v: %s", err, out)
	}
	if want := "peer=" + webID + " correlation=26\n"; out != want {
		t.Fatalf("app saw %q, want %q (the proxy must replace caller-supplied identity headers)", out, want)
	}
	if out, err := run("--cert", toolCrt, "--key", toolKey); err == nil {
		t.Fatalf("curl with the denied SVID succeeded: %s", out)
	}
	waitFor(t, "denial logged", 10*time.Second, func() bool {
		for _, l := range findLog(e.serverLog, "peer_id", toolID) {
			if fmt.Sprint(l["policies"]) == "[ops-may-not-connect]" {
				return true
			}
		}
		return false
	})
	if v := metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="no_client_certificate"`); v != 1 {
		t.Fatalf("handshake failures without a certificate = %v, want 1", v)
	}
}

// sClient runs openssl s_client against addr, sends a line and returns what
// came back before the server closed or 10 s passed.
func sClient(t *testing.T, openssl, addr string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, append([]string{"s_client", "-connect", addr, "-quiet", "-verify_return_error"}, args...)...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	defer func() {
		if testing.Verbose() {
			t.Logf("openssl s_client %v: stderr:\n%s", args, stderr.String())
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(in, "hello")
	var got strings.Builder
	r := bufio.NewReader(out)
	for {
		line, err := r.ReadString('\n')
		got.WriteString(line)
		if err != nil || strings.Contains(line, "hello") {
			break
		}
	}
	in.Close()
	cancel()
	_ = cmd.Wait()
	return got.String()
}

// TestOpenSSL: openssl s_client without a certificate gets no app data;
// with the allowed SVID the app answers with its SPIFFE ID (from PROXY v2);
// with the denied SVID it gets no app data.
func TestOpenSSL(t *testing.T) {
	openssl := needTool(t, "openssl", "openssl")
	e := newEnv(t)
	files := t.TempDir()
	webCrt, webKey, bundle, err := e.web.WriteFiles(files, "web")
	if err != nil {
		t.Fatal(err)
	}
	toolCrt, toolKey, _, _ := e.tool.WriteFiles(files, "tool")
	addr := e.server.Addr("api").String()
	if got := sClient(t, openssl, addr, "-CAfile", bundle); strings.Contains(got, "hello") {
		t.Fatalf("no certificate: app answered %q", got)
	}
	if got := sClient(t, openssl, addr, "-CAfile", bundle, "-cert", webCrt, "-cert_chain", webCrt, "-key", webKey); got != webID+" hello\n" {
		t.Fatalf("allowed SVID: got %q", got)
	}
	if got := sClient(t, openssl, addr, "-CAfile", bundle, "-cert", toolCrt, "-cert_chain", toolCrt, "-key", toolKey); strings.Contains(got, "hello") {
		t.Fatalf("denied SVID: app answered %q", got)
	}
	if n := e.app.count(toolID); n != 0 {
		t.Fatalf("app saw the denied identity %d times", n)
	}
	if got := sClient(t, openssl, addr, "-CAfile", bundle, "-cert", webCrt, "-cert_chain", webCrt, "-key", webKey, "-tls1_2"); strings.Contains(got, "hello") {
		t.Fatalf("TLS 1.2 accepted by a TLS 1.3-only listener: %q", got)
	}
	if v := metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="no_client_certificate"`); v != 1 {
		t.Fatalf("handshake failures without a certificate = %v, want 1", v)
	}
	if v := metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="protocol_version"`); v != 1 {
		t.Fatalf("protocol version failures = %v, want 1\n%s", v, httpGet(t, "http://"+e.server.Addr("admin").String()+"/metrics"))
	}
}

// TestTestSSL scans an inbound listener configured for TLS 1.2+ (the
// weaker of the two settings) with testssl.sh and asserts on its JSON that
// nothing below TLS 1.2 and no weak cipher category is offered.
func TestTestSSL(t *testing.T) {
	testssl := needTool(t, "testssl", "testssl.sh")
	if testing.Short() {
		t.Skip("testssl scan skipped in -short mode")
	}
	for _, minVersion := range []string{"1.2", "1.3"} {
		t.Run("min_"+minVersion, func(t *testing.T) {
			e := newEnv(t, withConfig(func(c *proxy.Config) { c.TLS.MinVersion = minVersion }))
			out := filepath.Join(t.TempDir(), "scan.json")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, testssl, "--quiet", "--color", "0", "--warnings", "off", "--fast", "-p", "-s",
				"--jsonfile", out, e.server.Addr("api").String())
			log, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("testssl timed out: %s", log)
			}
			_ = err // testssl exits non-zero when it finds something to warn about; the JSON decides
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("testssl wrote no JSON (%v): %s", err, log)
			}
			if keep := os.Getenv("WARD_KEEP_SCAN"); keep != "" {
				_ = os.WriteFile(keep+"-"+minVersion+".json", b, 0o644)
			}
			var findings []struct{ ID, Severity, Finding string }
			if err := json.Unmarshal(b, &findings); err != nil {
				t.Fatalf("testssl JSON: %v", err)
			}
			byID := map[string]string{}
			for _, f := range findings {
				byID[f.ID] = f.Finding
			}
			for _, id := range []string{"cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"} {
				if f, ok := byID[id]; !ok || !strings.HasPrefix(f, "not offered") {
					t.Errorf("%s: %q, want not offered", id, f)
				}
			}
			for _, f := range findings {
				if f.Severity == "LOW" || f.Severity == "MEDIUM" || f.Severity == "HIGH" || f.Severity == "CRITICAL" {
					t.Errorf("testssl finding %s is %s: %s", f.ID, f.Severity, f.Finding)
				}
			}
			for _, id := range []string{"SSLv2", "SSLv3", "TLS1", "TLS1_1"} {
				if f, ok := byID[id]; !ok || !strings.HasPrefix(f, "not offered") {
					t.Errorf("%s: %q, want not offered", id, f)
				}
			}
			if f := byID["TLS1_3"]; !strings.HasPrefix(f, "offered") {
				t.Errorf("TLS1_3: %q, want offered", f)
			}
			want12 := map[string]string{"1.2": "offered", "1.3": "not offered"}[minVersion]
			if f := byID["TLS1_2"]; !strings.HasPrefix(f, want12) {
				t.Errorf("TLS1_2: %q, want %s", f, want12)
			}
			if t.Failed() {
				t.Logf("testssl output:\n%s", log)
			}
		})
	}
}

// TestHTTPHeaderKeepAliveDrain: an HTTP app behind an http-header listener
// serves several requests on one kept-alive mTLS connection, each carrying
// the verified peer ID; on shutdown the idle keep-alive connection is
// closed at once, so the drain does not wait for drain_timeout.
func TestHTTPHeaderKeepAliveDrain(t *testing.T) {
	app := httpApp(t)
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Inbound[0].PeerIdentity = proxy.PeerIdentityHTTPHeader
		c.Inbound[0].Forward = app
		c.DrainTimeout = cfgDur(time.Hour)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(e.web.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(xs, xs, tlsconfig.AuthorizeID(spiffeid.RequireFromString(apiID)))}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := 0; i < 3; i++ {
		resp, err := client.Get("https://" + e.server.Addr("api").String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), "peer="+webID+" ") {
			t.Fatalf("request %d: app saw %q", i, b)
		}
	}
	if v := metric(t, e.server, "ward_proxy_connections_total"); v != 1 {
		t.Fatalf("%v connections for 3 kept-alive requests, want 1", v)
	}
	e.stopServer()
	select {
	case err := <-e.serverDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("drain waited on an idle keep-alive connection")
	}
}
