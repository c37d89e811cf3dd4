package proxy_test

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/proxytest"
)

// A peer of a trust domain the proxy holds no bundle of (not federated) is
// refused at the handshake, with its own reason in the metrics and the
// access log.
func TestPeerOfUnfederatedTrustDomainRefusedAtHandshake(t *testing.T) {
	e := newEnv(t)
	dir, err := os.MkdirTemp("", "wpx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	other, err := proxytest.NewAuthority(ctx, dir, "other.example")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	w, err := other.AddWorkload(ctx, "/ns/shop/web", 0)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, _, err := w.WriteFiles(dir, "web")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// The client does not verify the server: the test is the server's check.
	c, err := tls.Dial("tcp", e.server.Addr("api").String(), &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true})
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("a peer of an unfederated trust domain got data")
	}
	waitFor(t, "the refusal in the access log", 10*time.Second, func() bool {
		return len(findLog(e.serverLog, "outcome", "handshake_failed")) > 0
	})
	line := findLog(e.serverLog, "outcome", "handshake_failed")[0]
	if msg, _ := line["error"].(string); len(msg) < 26 || msg[:26] != "trust_domain_not_federated" {
		t.Fatalf("access log: %v", line)
	}
	if n := metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="trust_domain_not_federated"`); n != 1 {
		t.Fatalf("handshake failure metric = %v", n)
	}
}
