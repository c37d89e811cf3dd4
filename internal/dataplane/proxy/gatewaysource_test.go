package proxy_test

import (
	"crypto/tls"
	"net"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/proxyproto"
)

// TestGatewaySourcesCountPerSource runs the attack through a gateway: the
// gateway bounds a source only until it has read its ClientHello, so a
// caller sending ClientHellos and then nothing would hold as many TLS
// handshakes open on an accept_proxy_v2 listener as the gateway lets it
// have connections. The listener counts each connection against the
// original source its PROXY header names: past max_handshakes_per_source,
// that source's next connection is refused before its handshake, while
// another source behind the same gateway is served.
func TestGatewaySourcesCountPerSource(t *testing.T) {
	const shakes = 2
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Inbound[0].AcceptProxyV2 = true
		c.MaxHandshakesPerSource = shakes
	}))
	addr := e.server.Addr("api").String()
	gw := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 443}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after release (cleanups run last first)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	dial := func(src string, cfg *tls.Config) (*tls.Conn, error) {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		hdr, err := proxyproto.AppendV2(nil, &net.TCPAddr{IP: net.ParseIP(src), Port: 40000}, gw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Write(hdr); err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, cfg)
		return tc, tc.Handshake()
	}
	// The attacker's stalled handshakes: the proxy has sent its flight
	// (so it counted the connection) when the client is asked for its
	// certificate; the client then never answers.
	asked := make(chan struct{}, shakes)
	for i := 0; i < shakes; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = dial("198.51.100.7", &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked <- struct{}{}
				<-release
				return &tls.Certificate{}, nil
			}})
		}()
	}
	for i := 0; i < shakes; i++ {
		<-asked
	}
	// One more from the same original source: refused before any TLS.
	if _, err := dial("198.51.100.7", &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatalf("a source holding %d handshakes through the gateway got one more", shakes)
	}
	if n := metric(t, e.server, "ward_proxy_connections_rejected_total", `reason="per_source_handshakes"`); n != 1 {
		t.Fatalf("rejected per_source_handshakes = %v", n)
	}
	// Another source behind the same gateway gets its handshake.
	if _, err := dial("203.0.113.9", &tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatalf("another source through the gateway: %v", err)
	}
	once.Do(func() { close(release) })
}
