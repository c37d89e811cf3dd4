package scan_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/governance/scan"
)

// startHAProxy runs Debian's haproxy terminating TLS on a loopback port
// with bind (the options after "ssl crt ...") and answering HTTP 200; it
// returns the address.
func startHAProxy(t *testing.T, cert, key, bind string) string {
	t.Helper()
	bin := need(t, "haproxy")
	dir := t.TempDir()
	c, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(dir, "server.pem")
	if err := os.WriteFile(pemFile, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	// A free port: haproxy binds it itself (a small race with other
	// processes, retried below).
	for attempt := 0; attempt < 3; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cfg := "global\n  maxconn 256\n" +
			"defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n" +
			"frontend fe\n  bind " + addr + " ssl crt " + pemFile + " " + bind + "\n  http-request return status 200\n"
		cfgFile := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		cmd := exec.Command(bin, "-db", "-f", cfgFile)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
			select {
			case <-done:
				t.Logf("haproxy exited (attempt %d): %s", attempt+1, out.String())
			default:
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
					return addr
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			break
		}
	}
	t.Fatal("haproxy did not start")
	return ""
}

// TestScanHAProxy scans Debian's haproxy configured weak (TLS 1.0 and up,
// every suite at OpenSSL security level 0, RSA) and strong (TLS 1.3 only,
// ECDSA), grades each, and compares with sslscan on the same endpoints.
func TestScanHAProxy(t *testing.T) {
	need(t, "haproxy")
	need(t, "sslscan")
	dir := t.TempDir()
	ca := newCA(t, dir)
	rc, rk := ca.issue(t, dir, "rsa", "rsa", "weak.test")
	ec, ek := ca.issue(t, dir, "ecdsa", "ecdsa", "strong.test")
	weak := startHAProxy(t, rc, rk, "ssl-min-ver TLSv1.0 ciphers ALL:@SECLEVEL=0")
	strong := startHAProxy(t, ec, ek, "ssl-min-ver TLSv1.3")

	w := scanOne(t, weak, scan.Options{ServerName: "weak.test", Roots: ca.pool})
	if got := offered(w); !slices.Equal(got, []string{"TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"}) {
		t.Errorf("weak haproxy offers %v", got)
	}
	wantRules(t, w, "protocol-tls10", "protocol-tls11", "suite-cbc", "suite-no-forward-secrecy", "client-cert-not-requested")
	noRules(t, w, "chain-untrusted", "hostname-mismatch", "protocol-sslv3")
	if scan.Worst(w.Findings) < scan.High {
		t.Errorf("weak haproxy: worst finding %v, want high or above", scan.Worst(w.Findings))
	}
	compareWithSSLScan(t, "haproxy-weak", weak, "weak.test", w)

	s := scanOne(t, strong, scan.Options{ServerName: "strong.test", Roots: ca.pool})
	if got := offered(s); !slices.Equal(got, []string{"TLSv1.3"}) {
		t.Errorf("strong haproxy offers %v, want TLSv1.3 only", got)
	}
	noRules(t, s, "protocol-tls10", "protocol-tls11", "suite-cbc", "suite-no-forward-secrecy", "chain-untrusted", "hostname-mismatch")
	if wst := scan.Worst(s.Findings); wst > scan.Medium {
		t.Errorf("strong haproxy: worst finding %v: %v", wst, s.Findings)
	}
	if s.Chain == nil || !s.Chain.Trusted || !strings.HasPrefix(s.Chain.Certificates[0].KeyType, "ECDSA") {
		t.Errorf("strong haproxy chain: %+v", s.Chain)
	}
	compareWithSSLScan(t, "haproxy-strong", strong, "strong.test", s)
}
