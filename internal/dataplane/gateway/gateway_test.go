package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/gateway"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// spiffeDial connects a go-spiffe mTLS client of the workload at addr to
// the gateway at gw with SNI sni, from local source ip ("" any), requiring
// the server to be serverID; it returns the connection after the
// handshake.
func spiffeDial(t testing.TB, workloadAddr, gw, sni, serverID, ip string) (*tls.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(workloadAddr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xs.Close() })
	cfg := tlsconfig.MTLSClientConfig(xs, xs, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	cfg.ServerName = sni
	d := &net.Dialer{Timeout: 10 * time.Second}
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	raw, err := d.Dial("tcp", gw)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// TestEndToEndThroughGateway: a ward outbound proxy and a go-spiffe mTLS
// client reach a ward inbound proxy only through the gateway; mutual TLS is
// verified end to end (the app sees the client's SPIFFE ID and original
// address, the client requires and sees the server's SPIFFE ID), a client
// requiring another server ID is refused by its own handshake, and every
// byte the gateway forwarded after the PROXY header is a TLS record with no
// plaintext in it.
func TestEndToEndThroughGateway(t *testing.T) {
	e := newEnv(t, nil)
	const secret = "attack-at-dawn-7f3a"
	// A go-spiffe client: it sees the server's ID, the server sees its ID.
	// Its connection stays open during the proxy's request below.
	c, err := spiffeDial(t, e.web.Addr, e.gw.Addr("listen").String(), apiSNI, apiID, "")
	if err != nil {
		t.Fatalf("go-spiffe client through the gateway: %v", err)
	}
	id, err := x509svid.IDFromCert(c.ConnectionState().PeerCertificates[0])
	if err != nil || id.String() != apiID {
		t.Fatalf("the client sees server %v (%v), want %s", id, err, apiID)
	}
	fmt.Fprintf(c, "%s\n", secret)
	cr := bufio.NewReader(c)
	line, err := cr.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, webID+" ") {
		t.Fatalf("echo %q %v: the server did not see the client's SPIFFE ID", line, err)
	}

	got, err := e.request(secret)
	if err != nil {
		t.Fatalf("request through outbound proxy -> gateway -> inbound proxy: %v", err)
	}
	if !strings.HasPrefix(got, webID+" 127.0.0.1:") || !strings.HasSuffix(got, " "+secret) {
		t.Fatalf("echo %q: want the caller's SPIFFE ID %s, its original address and the message", got, webID)
	}
	fmt.Fprintf(c, "%s\n", secret)
	if line, err := cr.ReadString('\n'); err != nil || !strings.HasPrefix(line, webID+" ") {
		t.Fatalf("second echo %q %v", line, err)
	}
	c.Close()

	// A client that requires another server ID fails its own handshake:
	// the gateway cannot stand in for the server.
	if c, err := spiffeDial(t, e.web.Addr, e.gw.Addr("listen").String(), apiSNI, webID, ""); err == nil {
		c.Close()
		t.Fatal("a client requiring another server ID completed the handshake through the gateway")
	}

	// What the gateway forwarded: TLS records only, no plaintext.
	waitFor(t, "3 forwarded connections logged", func() bool {
		return len(findLog(e.gwLog, "outcome", "closed")) >= 2 && e.tap.accepted.Load() == 3
	})
	waitFor(t, "the tap's connections ended", func() bool { return e.tap.done.Load() == 3 && len(findLog(e.inboundLog, "listener", "api")) == 3 })
	for i := 0; i < 3; i++ {
		up, down := e.tap.recorded(i)
		n := checkTLSRecords(t, fmt.Sprintf("connection %d gateway->proxy", i), up, true)
		checkTLSRecords(t, fmt.Sprintf("connection %d proxy->gateway", i), down, false)
		if n < 2 {
			t.Errorf("connection %d: %d records towards the proxy", i, n)
		}
		if bytes.Contains(up, []byte(secret)) || bytes.Contains(down, []byte(secret)) || bytes.Contains(down, []byte(webID)) {
			t.Errorf("connection %d: plaintext in the bytes the gateway forwarded", i)
		}
	}

	// Logs: the gateway names route, sizes and that it cannot know the
	// peer; the inbound proxy names the verified caller, the original
	// source and the gateway connection it came through.
	gl := findLog(e.gwLog, "route", "api")
	if len(gl) != 3 {
		t.Fatalf("gateway access log: %d lines for route api, want 3:\n%s", len(gl), e.gwLog.String())
	}
	ids := map[string]bool{}
	for _, l := range gl {
		ids[fmt.Sprint(l["id"])] = true
		if l["sni"] != apiSNI || l["peer_identity"] != gateway.PeerIdentityNote || l["bytes_in"].(float64) < 1000 {
			t.Errorf("gateway access log line %v", l)
		}
	}
	for _, l := range findLog(e.inboundLog, "peer_id", webID) {
		if !ids[fmt.Sprint(l["gateway_id"])] || !strings.HasPrefix(fmt.Sprint(l["client_addr"]), "127.0.0.1:") || l["via_gateway"] == nil {
			t.Errorf("inbound access log line %v: want the gateway's connection id, the original source and via_gateway", l)
		}
	}
	if n := metric(t, e.gw, "ward_gateway_connections_total", `route="api"`); n != 3 {
		t.Errorf("ward_gateway_connections_total{route=api} = %v, want 3", n)
	}
	if n := metric(t, e.gw, "ward_gateway_refused_total"); n != 0 {
		t.Errorf("refusals: %v, want 0", n)
	}

	// The inbound listener (accept_proxy_v2) refuses a caller that
	// bypasses the gateway: no PROXY v2 header.
	if c, err := spiffeDial(t, e.web.Addr, e.inbound.Addr("api").String(), apiSNI, apiID, ""); err == nil {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("a connection without a PROXY v2 header was served by an accept_proxy_v2 listener")
		}
		c.Close()
	}
	waitFor(t, "refusal logged", func() bool {
		for _, l := range findLog(e.inboundLog, "outcome", "handshake_failed") {
			if strings.HasPrefix(fmt.Sprint(l["error"]), "proxy_v2: ") {
				return true
			}
		}
		return false
	})
}

func findLog(log *syncbuf.Buffer, k, v string) []map[string]any {
	var out []map[string]any
	for _, m := range log.JSONLines() {
		if fmt.Sprint(m[k]) == v {
			out = append(out, m)
		}
	}
	return out
}

// TestGatewayHoldsNoKey: the gateway's configuration has no field for key
// material (and refuses one), and the package imports no TLS stack, X.509
// or SPIFFE SVID code that could use one (it parses trust domain names
// only; with catalog_socket its gRPC client reaches the agent's unix
// socket with local credentials, no TLS). TestGatewayInNetworkNamespaces
// (test/e2e) searches the running gateway's memory for the workloads' keys.
func TestGatewayHoldsNoKey(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeOf(gateway.Config{}), reflect.TypeOf(gateway.Route{})} {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name := strings.ToLower(f.Name + " " + f.Tag.Get("yaml"))
			for _, bad := range []string{"key", "cert", "svid", "workload", "tls", "secret", "bundle", "pem", "spiffe"} {
				if strings.Contains(name, bad) {
					t.Errorf("%s.%s looks like key material (%q)", typ.Name(), f.Name, bad)
				}
			}
		}
	}
	for _, field := range []string{"key_file: /etc/ward/key.pem", "tls: {cert: x}", "workload_api_socket: unix:///run/ward/agent.sock"} {
		_, err := gateway.ParseConfig([]byte("listen: 127.0.0.1:1\ntrust_domain: prod.example\nroutes: [{service: api, forward: 127.0.0.1:2}]\n" + field))
		if err == nil {
			t.Errorf("config with %q accepted", field)
		}
	}
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range []string{"crypto/tls", "crypto/x509", "crypto/ecdsa", "crypto/ecdh", "crypto/rsa", "crypto/ed25519", "crypto/mlkem",
				"go-spiffe/v2/svid", "go-spiffe/v2/spiffetls", "go-spiffe/v2/workloadapi", "go-spiffe/v2/bundle", "workloadapi", "keyutil"} {
				if strings.Contains(p, bad) {
					t.Errorf("%s imports %s: the gateway must not be able to hold or use a key", f, p)
				}
			}
		}
	}
}

// TestAttacksRefused: bogus SNI (unknown service, other trust domain),
// missing SNI, plaintext HTTP, a 64 KiB ClientHello and one source holding
// every pending slot: each refused and counted by reason, nothing
// forwarded, and another source is still served end to end.
func TestAttacksRefused(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) {
		c.ClientHelloTimeout = dur(time.Minute) // the idle connections below must outlive the test
		c.MaxConnectionsPerSource = 8
		c.MaxPendingPerSource = 4
	})
	gw := e.gw.Addr("listen").String()
	refused := func(reason string, want float64) {
		t.Helper()
		waitFor(t, "refused "+reason, func() bool {
			return metric(t, e.gw, "ward_gateway_refused_total", `reason="`+reason+`"`) == want
		})
	}
	tlsAttempt := func(sni string) error {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(20 * time.Second))
		return tc.Handshake()
	}
	if err := tlsAttempt("evil.prod.example.ward"); err == nil {
		t.Fatal("handshake with an unknown SNI completed")
	}
	refused(gateway.ReasonUnknown, 1)
	if err := tlsAttempt("api.other.example.ward"); err == nil {
		t.Fatal("handshake with another trust domain's SNI completed")
	}
	refused(gateway.ReasonUnknown, 2)
	if err := tlsAttempt(""); err == nil {
		t.Fatal("handshake without SNI completed")
	}
	refused(gateway.ReasonNoSNI, 1)

	// Plaintext HTTP: closed without a byte back.
	c, err := net.Dial("tcp", gw)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", apiSNI)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := c.Read(make([]byte, 100)); n != 0 || err == nil {
		t.Fatalf("plaintext HTTP got %d bytes back (%v)", n, err)
	}
	c.Close()
	refused(gateway.ReasonNotTLS, 1)

	// A 64 KiB ClientHello (records of 2^14 bytes).
	c, err = net.Dial("tcp", gw)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(hugeHello(64 << 10)) // may fail once the gateway has closed
	c.Read(make([]byte, 1))
	c.Close()
	refused(gateway.ReasonTooLarge, 1)

	// One source holds every pending slot (connections that never send a
	// ClientHello): its next connection is refused at accept.
	var idle []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	waitFor(t, "the fifth connection of one source refused", func() bool {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return metric(t, e.gw, "ward_gateway_refused_total", `reason="per_source_pending"`) >= 1 && err != nil
	})
	if n := e.tap.accepted.Load(); n != 0 {
		t.Fatalf("the gateway forwarded %d connection(s) during the attacks", n)
	}
	// Another source is unaffected: full mTLS through the gateway.
	sc, err := spiffeDial(t, e.web.Addr, gw, apiSNI, apiID, "127.0.0.2")
	if err != nil {
		t.Fatalf("another source through the gateway while one source is at its limit: %v", err)
	}
	fmt.Fprintf(sc, "hi\n")
	if line, err := bufio.NewReader(sc).ReadString('\n'); err != nil || !strings.HasPrefix(line, webID+" 127.0.0.2:") {
		t.Fatalf("echo %q %v", line, err)
	}
	sc.Close()
	for _, reason := range []string{gateway.ReasonUnknown, gateway.ReasonNoSNI, gateway.ReasonNotTLS, gateway.ReasonTooLarge} {
		if len(findLog(e.gwLog, "reason", reason)) == 0 {
			t.Errorf("no access log line with reason %s", reason)
		}
	}
	for _, l := range findLog(e.gwLog, "outcome", "refused") {
		if l["route"] != nil || l["peer_identity"] != gateway.PeerIdentityNote {
			t.Errorf("refused connection logged %v", l)
		}
	}
}

// hugeHello is a ClientHello handshake header announcing size bytes,
// followed by that many bytes, in records of 2^14.
func hugeHello(size int) []byte {
	msg := append([]byte{1, byte(size >> 16), byte(size >> 8), byte(size)}, make([]byte, size)...)
	var out []byte
	for len(msg) > 0 {
		n := min(1<<14, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// sink is a backend that counts connections and reads them to the end.
type sink struct {
	l        net.Listener
	accepted atomic.Int64
	bytes    atomic.Int64
}

func newSink(t testing.TB) *sink {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &sink{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go func() {
				n, _ := io.Copy(io.Discard, c)
				s.bytes.Add(n)
				c.Close()
			}()
		}
	}()
	return s
}

// TestSlowlorisRefused: a client that trickles its ClientHello is cut off
// at client_hello_timeout (the deadline counts from accept, not from the
// last byte), counted as timeout, and nothing is forwarded.
func TestSlowlorisRefused(t *testing.T) {
	s := newSink(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := &syncbuf.Buffer{}
	g, _ := startGateway(t, ctx, &gateway.Config{Listen: "127.0.0.1:0", TrustDomain: tdName, AdminAddress: "127.0.0.1:0",
		ClientHelloTimeout: dur(time.Second), Routes: []gateway.Route{{Service: "api", Forward: s.l.Addr().String()}}}, gateway.WithAccessLog(log))
	hello := hugeHello(300)[:200]
	c, err := net.Dial("tcp", g.Addr("listen").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed := false
	for i := 0; i < len(hello) && !closed; i++ {
		if _, err := c.Write(hello[i : i+1]); err != nil {
			closed = true
		}
		time.Sleep(50 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed = true
		}
	}
	if !closed {
		t.Fatal("a ClientHello trickled over 10s was not cut off")
	}
	waitFor(t, "timeout counted", func() bool { return metric(t, g, "ward_gateway_refused_total", `reason="timeout"`) == 1 })
	if s.accepted.Load() != 0 {
		t.Fatal("forwarded")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestLifecycle: /healthz and /readyz, a refused dial counted, and a drain
// on shutdown that lets an open connection finish while /readyz fails and
// new connections are not accepted.
func TestLifecycle(t *testing.T) {
	s := newSink(t)
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := &syncbuf.Buffer{}
	g, done := startGateway(t, ctx, &gateway.Config{Listen: "127.0.0.1:0", TrustDomain: tdName, AdminAddress: "127.0.0.1:0",
		DrainTimeout: dur(time.Minute),
		Routes:       []gateway.Route{{Service: "api", Forward: s.l.Addr().String()}, {Service: "gone", Forward: deadAddr}}},
		gateway.WithAccessLog(log))
	admin := "http://" + g.Addr("admin").String()
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready: 2 route(s): api.prod.example.ward, gone.prod.example.ward"} {
		resp, err := http.Get(admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, b)
		}
	}
	send := func(sni string) net.Conn {
		c, err := net.Dial("tcp", g.Addr("listen").String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(realHello(t, sni))
		return c
	}
	send("gone.prod.example.ward").Close()
	waitFor(t, "dial failure counted", func() bool { return metric(t, g, "ward_gateway_refused_total", `reason="dial_failed"`) == 1 })

	open := send(apiSNI)
	waitFor(t, "forwarded", func() bool { return metric(t, g, "ward_gateway_connections_open", `route="api"`) == 1 })
	cancel()
	waitFor(t, "readyz fails while draining", func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	if c, err := net.DialTimeout("tcp", g.Addr("listen").String(), time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts while draining")
	}
	select {
	case <-done:
		t.Fatal("Run returned with a connection open and drain_timeout 1m")
	case <-time.After(100 * time.Millisecond):
	}
	open.Write([]byte("more"))
	open.Close()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("drain did not end after the last connection closed")
	}
	waitFor(t, "sink read everything", func() bool { return s.bytes.Load() > 200 })
	l := findLog(log, "route", "api")
	if len(l) != 1 || l[0]["outcome"] != "closed" || l[0]["bytes_in"].(float64) != float64(s.bytes.Load()) {
		t.Fatalf("access log %v, sink read %d", l, s.bytes.Load())
	}
}

// realHello is the ClientHello of a crypto/tls client for sni.
func realHello(t testing.TB, sni string) []byte {
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	defer b.Close()
	b.SetDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}
