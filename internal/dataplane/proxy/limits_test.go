package proxy_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
)

// dialFrom opens n TCP connections from local address src to addr and
// sends nothing on them (idle: no TLS ClientHello, no certificate).
func dialFrom(t *testing.T, src, addr string, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d from %s: %v", i, src, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// closedByServer waits (bounded) until the server closes c: a read ends
// with EOF or a reset, not with our own deadline.
func closedByServer(c net.Conn, within time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestOneSourceCannotTakeEverySlot runs the red-team attack: 300 idle TCP
// connections from one address (127.0.0.2) against a proxy with
// max_connections 300. Before per-source limits they took every slot and
// a legitimate client was refused until the handshake timeout; now the
// source gets max_handshakes_per_source slots, the rest are refused at
// accept (metric reason per_source_handshakes), and a client from another
// address (127.0.0.1) completes an mTLS request.
func TestOneSourceCannotTakeEverySlot(t *testing.T) {
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.MaxConnections = 300
		c.HandshakeTimeout = cfgDur(time.Minute) // the idle connections stay for the whole test
	}))
	addr := e.server.Addr("api").String()
	const attack = 300
	const perSourceShakes = proxy.DefaultMaxHandshakesPerSource // default for max_connections 300
	conns := dialFrom(t, "127.0.0.2", addr, attack)
	want := float64(attack - perSourceShakes)
	waitFor(t, "refusals of the attacker's surplus connections", 20*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="per_source_handshakes"`) >= want
	})
	if v := metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="per_source_handshakes"`); v != want {
		t.Fatalf("refused %v of the attacker's connections, want %v", v, want)
	}
	if v := metric(t, e.server, "ward_proxy_connections_open", `direction="inbound"`); v != perSourceShakes {
		t.Fatalf("inbound connections open = %v, want the attacker's %d", v, perSourceShakes)
	}
	// A refused connection is closed at once; the admitted ones stay.
	if !closedByServer(conns[attack-1], 10*time.Second) {
		t.Fatal("the attacker's last connection was not closed by the proxy")
	}
	// The legitimate client, from another address, is served.
	got, err := request(e.clientWeb, "hello")
	if err != nil {
		t.Fatalf("legitimate client locked out by one host's idle connections: %v", err)
	}
	if got != webID+" hello" {
		t.Fatalf("echo %q", got)
	}
	if v := metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="max_connections"`); v != 0 {
		t.Fatalf("max_connections refusals = %v: the attacker filled the global limit", v)
	}
}

// TestHandshakeTimeoutClosesIdle: connections that never present a
// certificate are closed after handshake_timeout (counted as handshake
// failures, reason timeout), and their source's pre-handshake slots are
// free again afterwards.
func TestHandshakeTimeoutClosesIdle(t *testing.T) {
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.HandshakeTimeout = cfgDur(300 * time.Millisecond)
		c.MaxHandshakesPerSource = 2
	}))
	addr := e.server.Addr("api").String()
	idle := dialFrom(t, "127.0.0.3", addr, 3)
	waitFor(t, "third pre-handshake connection refused", 10*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="per_source_handshakes"`) == 1
	})
	for i, c := range idle {
		if !closedByServer(c, 20*time.Second) {
			t.Fatalf("idle connection %d not closed by the proxy", i)
		}
	}
	waitFor(t, "handshake timeouts counted", 10*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="timeout"`) >= 2
	})
	// The slots are released: two new idle connections are admitted (and
	// time out in turn), none refused.
	again := dialFrom(t, "127.0.0.3", addr, 2)
	for i, c := range again {
		if !closedByServer(c, 20*time.Second) {
			t.Fatalf("second-round idle connection %d not closed", i)
		}
	}
	waitFor(t, "second-round timeouts counted", 10*time.Second, func() bool {
		return metric(t, e.server, "ward_proxy_handshake_failures_total", `reason="timeout"`) >= 4
	})
	if v := metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="per_source_handshakes"`); v != 1 {
		t.Fatalf("per_source_handshakes refusals = %v, want 1 (slots not released after the timeouts?)", v)
	}
	// A real client still works.
	if _, err := request(e.clientWeb, "hi"); err != nil {
		t.Fatal(err)
	}
}
