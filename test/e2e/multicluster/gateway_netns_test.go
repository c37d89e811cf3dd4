package multicluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/testutil/netns"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestGatewayInNetworkNamespaces is issue 12's scenarios 1 and 2 in
// network namespaces: clusters A and B each in its own namespace; B's
// inbound proxy listens on B's loopback only, so A's workload reaches B's
// api through B's `ward gateway` (routes from the catalog, `service:
// api@b.example` in A) and no other way.
//
//  1. Identity is verified end to end (B's proxy names A's client); a
//     capture on every link of B's namespace (the link to A and B's
//     loopback between gateway and inbound proxy) shows, on both
//     connections, a ClientHello and a ServerHello and then only encrypted
//     TLS records, and never the application's bytes; the gateway process
//     holds neither workload's private key (its memory is searched for
//     both keys).
//  2. A bogus SNI, no SNI, plaintext and a 64 KiB ClientHello sent to the
//     gateway from A's namespace: each refused and counted by reason,
//     nothing forwarded (no new connection to the inbound proxy).
func TestGatewayInNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clusters in network namespaces")
	}
	nw := netns.New(t)
	na, nb := nw.AddNode("a"), nw.AddNode("b")
	a := startClusterIn(t, na, "a.example", "  refresh_min: 1s\n")
	b := startClusterIn(t, nb, "b.example", "  refresh_min: 1s\n")
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))
	clientID, apiID := "spiffe://a.example/client", "spiffe://b.example/api"
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	a.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", "spiffe://a.example/ward/agent/node-1", "--selector", uid, "--federates-with", "b.example")
	b.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", "spiffe://b.example/ward/agent/node-1", "--selector", uid, "--federates-with", "a.example")
	dir := t.TempDir()
	polA, polB := filepath.Join(dir, "a.cedar"), filepath.Join(dir, "b.cedar")
	os.WriteFile(polA, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource);`), 0o600)
	os.WriteFile(polB, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" && principal.path == "/client" };`), 0o600)
	a.ward(t, "policy", "apply", polA)
	b.ward(t, "policy", "apply", polB)
	agA, agB := a.agent(t), b.agent(t)

	const inboundPort, gwPort = 9443, 15443
	inbound := fmt.Sprintf("127.0.0.1:%d", inboundPort) // B's loopback: out of A's reach
	gw := nb.Addr(gwPort)
	logB := crossProxy(t, nb, dir, "b", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
    service: {name: api, port: 8443}
`, agB.Socket, filepath.Join(b.pub, "policy.sock"), inbound, echoServer(t, filepath.Join(dir, "b-app.sock"))))
	b.ward(t, "service", "export", "api", "--forward", inbound, "--spiffe-id", apiID, "--gateway", gw)
	gwAdmin := filepath.Join(dir, "gw-admin.sock")
	gwCfg := filepath.Join(dir, "gw.yaml")
	os.WriteFile(gwCfg, []byte(fmt.Sprintf("listen: %s\ntrust_domain: b.example\nadmin_address: unix://%s\naccess_log: stdout\ncatalog_socket: unix://%s\n",
		gw, gwAdmin, filepath.Join(b.pub, "policy.sock"))), 0o600)
	gcmd := nb.Command(0, e2e.WardBin, "gateway", "--config", gwCfg)
	logGW := &syncbuf.Buffer{}
	gcmd.Stdout, gcmd.Stderr = logGW, logGW
	if err := gcmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2e.StopProcess(gcmd) })
	admin := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", gwAdmin)
	}}, Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		resp, err := admin.Get("http://gateway" + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	waitUntil(t, "the gateway ready with api's route from the catalog", func() bool {
		code, body := get("/readyz")
		return code == 200 && strings.Contains(body, "api.b.example.ward")
	})
	outbound := filepath.Join(dir, "to-api.sock")
	logA := crossProxy(t, na, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
outbound:
  - name: to-api
    listen: unix://%s
    service: api@b.example
`, agA.Socket, filepath.Join(a.pub, "policy.sock"), outbound))
	// The only way in: B's inbound listener is not reachable from A.
	if c, err := na.Dial(nb.Addr(inboundPort)); err == nil {
		c.Close()
		t.Fatal("B's inbound proxy is reachable from A's namespace: the test would prove nothing")
	}

	// 1. Through the gateway, captured on every link of B.
	capture := nb.Capture(t)
	secret := fmt.Sprintf("plaintext-marker-%d", time.Now().UnixNano())
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("unix", outbound, 5*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "%s\n", secret)
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && line == "echo "+secret+"\n" {
				break
			}
			err = fmt.Errorf("reply %q: %v", line, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no round trip through B's gateway: %v\nproxy A:\n%s\ngateway:\n%s\nproxy B:\n%s", err,
				e2e.Tail(logA.String(), 2000), e2e.Tail(logGW.String(), 2000), e2e.Tail(logB.String(), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitUntil(t, "B's access log line", func() bool { return strings.Contains(logB.String(), `"peer_id":"`+clientID+`"`) })
	if !strings.Contains(logB.String(), `"decision":"allow"`) {
		t.Fatalf("B's proxy did not decide allow for A's client:\n%s", e2e.Tail(logB.String(), 2000))
	}
	time.Sleep(300 * time.Millisecond) // the last segments
	capture.Stop()
	checked := map[uint16]int{}
	for _, f := range capture.Flows() {
		port := f.Dst.Port
		if f.Src.Port == gwPort || f.Src.Port == inboundPort {
			port = f.Src.Port
		}
		if port != gwPort && port != inboundPort || len(f.Payload) == 0 {
			continue
		}
		if bytes.Contains(f.Payload, []byte(secret)) {
			t.Fatalf("the application's bytes crossed %s -> %s in clear", f.Src, f.Dst)
		}
		if !f.SYN {
			continue // a connection whose start was not captured
		}
		client := f.Dst.Port == port
		if err := onlyTLSAfterHello(f.Payload, client); err != nil {
			t.Fatalf("%s -> %s: %v (first bytes %x)", f.Src, f.Dst, err, f.Payload[:min(len(f.Payload), 64)])
		}
		checked[port]++
	}
	if checked[gwPort] < 2 || checked[inboundPort] < 2 {
		t.Fatalf("captured too little to prove anything: %v (directions checked by port)", checked)
	}
	t.Logf("capture: %v TLS directions checked (port %d: A <-> gateway, %d: gateway <-> inbound proxy); the marker never seen", checked, gwPort, inboundPort)

	// The gateway holds no workload's key: neither A's client's nor B's
	// api's private key is anywhere in its memory.
	for _, w := range []struct{ name, sock string }{{"A's client", agA.Socket}, {"B's api", agB.Socket}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+w.sock))
		cancel()
		if err != nil {
			t.Fatalf("%s's SVID: %v", w.name, err)
		}
		k, ok := svid.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			t.Fatalf("%s's key is a %T", w.name, svid.PrivateKey)
		}
		d, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		// The search finds a key where one is: the agent that issued it.
		ag := agA
		if w.sock == agB.Socket {
			ag = agB
		}
		if inAgent, _, err := memContains(ag.Cmd.Process.Pid, d); err != nil || !inAgent {
			t.Fatalf("the memory search does not find %s's key in its agent (%v): it proves nothing", w.name, err)
		}
		found, scanned, err := memContains(gcmd.Process.Pid, d)
		if err != nil {
			t.Fatalf("reading the gateway's memory: %v", err)
		}
		if found {
			t.Fatalf("%s's private key is in the gateway's memory", w.name)
		}
		t.Logf("%s's private key: not in the gateway's %d bytes of memory", w.name, scanned)
	}

	// 2. Attacks from A's namespace: each refused, counted, nothing
	// forwarded.
	conns := func() int {
		n := 0
		for _, l := range strings.Split(logB.String(), "\n") {
			if strings.Contains(l, `"listener":"api"`) {
				n++
			}
		}
		return n
	}
	capture2 := nb.Capture(t)
	before := conns()
	metric := func(reason string) int {
		_, body := get("/metrics")
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, `ward_gateway_refused_total{reason="`+reason+`"}`) {
				n, _ := strconv.Atoi(strings.Fields(l)[1])
				return n
			}
		}
		return -1
	}
	big := make([]byte, 0, 70000)
	body := make([]byte, 64<<10)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	for len(hs) > 0 {
		n := min(len(hs), 16384)
		big = append(big, 0x16, 3, 1, byte(n>>8), byte(n))
		big = append(big, hs[:n]...)
		hs = hs[n:]
	}
	for _, atk := range []struct {
		name, reason string
		send         func(net.Conn)
	}{
		{"bogus SNI", "unknown_sni", func(c net.Conn) {
			tls.Client(c, &tls.Config{ServerName: "payments.b.example.ward", InsecureSkipVerify: true}).Handshake()
		}},
		{"another trust domain's name", "unknown_sni", func(c net.Conn) {
			tls.Client(c, &tls.Config{ServerName: "api.c.example.ward", InsecureSkipVerify: true}).Handshake()
		}},
		{"no SNI", "no_sni", func(c net.Conn) {
			tls.Client(c, &tls.Config{ServerName: "10.0.0.1", InsecureSkipVerify: true}).Handshake()
		}},
		{"plaintext", "not_tls", func(c net.Conn) { fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api.b.example.ward\r\n\r\n") }},
		{"64 KiB ClientHello", "too_large", func(c net.Conn) { c.Write(big) }},
	} {
		n0 := metric(atk.reason)
		c, err := na.Dial(gw)
		if err != nil {
			t.Fatalf("%s: dial the gateway from A: %v", atk.name, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		atk.send(c)
		io.Copy(io.Discard, c) // the gateway closes it without a byte
		c.Close()
		waitUntil(t, atk.name+" counted as "+atk.reason, func() bool { return metric(atk.reason) == n0+1 })
	}
	time.Sleep(300 * time.Millisecond)
	capture2.Stop()
	for _, f := range capture2.Flows() {
		if f.Dst.Port == inboundPort || f.Src.Port == inboundPort {
			t.Fatalf("an attack reached B's inbound proxy: %s -> %s (%d bytes)", f.Src, f.Dst, len(f.Payload))
		}
		if f.Src.Port == gwPort && len(f.Payload) > 0 {
			t.Fatalf("the gateway answered an attack with %d bytes: %x", len(f.Payload), f.Payload[:min(64, len(f.Payload))])
		}
	}
	if conns() != before {
		t.Fatalf("B's inbound proxy logged connections during the attacks:\n%s", e2e.Tail(logB.String(), 2000))
	}
	if !strings.Contains(logGW.String(), `"outcome":"refused","reason":"too_large"`) {
		t.Errorf("the gateway's access log lacks the refusal:\n%s", e2e.Tail(logGW.String(), 3000))
	}
}

// onlyTLSAfterHello checks that p (one direction of a connection) is TLS
// records only: first the handshake record(s) of a ClientHello (client) or
// ServerHello (server), then only change_cipher_spec, alert and
// application_data records (TLS 1.3: everything after the hellos is
// encrypted). A last record cut off by the end of the capture is allowed.
func onlyTLSAfterHello(p []byte, client bool) error {
	want := byte(2)
	if client {
		want = 1
	}
	first := true
	for len(p) >= 5 {
		typ, ver, n := p[0], binary.BigEndian.Uint16(p[1:3]), int(binary.BigEndian.Uint16(p[3:5]))
		if ver>>8 != 3 || n == 0 || n > 16384+256 {
			return fmt.Errorf("not a TLS record: type %d version %#x length %d", typ, ver, n)
		}
		switch {
		case first:
			if typ != 22 || len(p) < 6 || p[5] != want {
				return fmt.Errorf("the first record is type %d, not the hello (handshake type %d)", typ, want)
			}
			first = false
		case typ == 20 || typ == 21 || typ == 23:
		default:
			return fmt.Errorf("a record of type %d after the hello: only change_cipher_spec, alert and application_data may follow", typ)
		}
		if len(p) < 5+n {
			return nil
		}
		p = p[5+n:]
	}
	if first {
		return fmt.Errorf("no TLS record")
	}
	return nil
}

// memContains searches the readable memory of process pid for needle.
func memContains(pid int, needle []byte) (bool, int, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return false, 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return false, 0, err
	}
	defer mem.Close()
	scanned := 0
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1][0] != 'r' || (len(f) >= 6 && strings.HasPrefix(f[5], "[v")) {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil || hi-lo > 1<<30 {
			continue
		}
		buf := make([]byte, hi-lo)
		n, _ := mem.ReadAt(buf, int64(lo))
		scanned += n
		if bytes.Contains(buf[:n], needle) {
			return true, scanned, nil
		}
	}
	if scanned == 0 {
		return false, 0, fmt.Errorf("nothing readable")
	}
	return false, scanned, nil
}
