package multicluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/node/wgnet"
	"github.com/wardproject/ward/internal/testutil/netns"
)

// wgNode is one node of the encrypted network: a namespace running a real
// `ward agent` with a network section.
type wgNode struct {
	nd      *netns.Node
	ag      *e2e.AgentProc
	id      string
	overlay string // 10.250.<i>.1
}

// get reads path from the agent's health address, inside its namespace.
func (w *wgNode) get(path string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return w.nd.Dial(w.ag.Health)
	}}}
	resp, err := c.Get("http://agent" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// netStatus reads the agent's /status from inside its namespace.
func (w *wgNode) netStatus(t *testing.T) (*agent.NetworkStatus, error) {
	body, err := w.get("/status")
	if err != nil {
		return nil, err
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return nil, err
	}
	if st.Network == nil {
		return nil, fmt.Errorf("no network section in /status")
	}
	return st.Network, nil
}

func (w *wgNode) waitNet(t *testing.T, what string, cond func(*agent.NetworkStatus) bool) *agent.NetworkStatus {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		st, err := w.netStatus(t)
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never held (status %+v, err %v); agent log:\n%s", w.id, what, st, err, e2e.Tail(w.ag.Logs.String(), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func hasPeer(st *agent.NetworkStatus, id string) bool {
	for _, p := range st.Peers {
		if p.ID == id {
			return true
		}
	}
	return false
}

// echoOn serves a TCP echo on addr inside nd until the test ends.
func echoOn(t *testing.T, nd *netns.Node, addr string) {
	t.Helper()
	var ln net.Listener
	if err := nd.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// roundTrip writes msg and reads it back within d.
func roundTrip(c net.Conn, msg []byte, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs")
	}
	return nil
}

// dialTimeout dials addr from nd, giving up after d.
func dialTimeout(nd *netns.Node, addr string, d time.Duration) (net.Conn, error) {
	var c net.Conn
	err := nd.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, d); return })
	return c, err
}

// linkWatch classifies every IPv4 packet that crosses the shared link.
type linkWatch struct {
	marker    []byte
	overlay   netip.Prefix
	intruder  netip.Addr
	wgPort    uint16
	mu        sync.Mutex
	markers   int // packets holding the plaintext marker
	clear     int // packets of ward nodes with an overlay address in clear
	intruderC int // the intruder's clear packets to the overlay
	wgUDP     int // WireGuard UDP packets
	wgFromX   int // WireGuard UDP packets from the intruder
}

func (l *linkWatch) packet(ip []byte) {
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	ihl := int(ip[0]&0x0f) * 4
	l.mu.Lock()
	defer l.mu.Unlock()
	if bytes.Contains(ip, l.marker) {
		l.markers++
	}
	if l.overlay.Contains(src) || l.overlay.Contains(dst) {
		if src == l.intruder || dst == l.intruder {
			l.intruderC++
		} else {
			l.clear++
		}
	}
	if ip[9] == 17 && len(ip) >= ihl+8 {
		sp, dp := binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
		if sp == l.wgPort || dp == l.wgPort {
			l.wgUDP++
			if src == l.intruder {
				l.wgFromX++
			}
		}
	}
}

func (l *linkWatch) counts() (markers, clear, intruderC, wgUDP, wgFromX int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.markers, l.clear, l.intruderC, l.wgUDP, l.wgFromX
}

// wantOnlyWireGuard is the capture check at a test's end: once the last
// frames are in, the link carried WireGuard UDP (else the capture proves
// nothing) and neither the plaintext marker nor an overlay packet of a
// ward node in clear.
func (l *linkWatch) wantOnlyWireGuard(t *testing.T) {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // the last frames
	markers, clear, _, wgUDP, _ := l.counts()
	if markers != 0 || clear != 0 {
		t.Fatalf("on the shared link: %d packets with the plaintext marker, %d overlay packets of ward nodes in clear", markers, clear)
	}
	if wgUDP == 0 {
		t.Fatal("no WireGuard UDP on the link: the capture proves nothing")
	}
	t.Logf("shared link: %d WireGuard UDP packets, no marker, no overlay packet of a ward node in clear", wgUDP)
}

// TestNodeEncryptionInNetworkNamespaces is issue 16's proof: three nodes
// (network namespaces on one bridge), each running a real `ward agent`
// with a network section against one authority (in a fourth namespace).
//
//  1. Traffic between nodes' overlay addresses crosses the tunnels: a
//     capture on the shared link sees WireGuard UDP and never the
//     plaintext marker nor an overlay packet in clear.
//  2. Attacks: an intruder with its own WireGuard key (never registered)
//     aimed at node b gets nothing through; sending to b's overlay address
//     in clear gets nothing through either (strict mode accepts it only
//     from the tunnel); a destination in the overlay with no peer is
//     dropped, not sent in clear.
//  3. Node a rotates its key (rotation_period 10s) under a running
//     stream: the stream survives, b learns a's new key.
//  4. Defense in depth: a `ward proxy` pair (a's client to b's api)
//     carries mTLS over the tunnel: b's proxy decides with the client's
//     SPIFFE ID, a capture on b's WireGuard interface shows only TLS
//     records inside the tunnel, the link only WireGuard UDP.
//  5. Evicting node c: every peer drops c's key (pushed), c's open
//     connection and new ones stop.
func TestNodeEncryptionInNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an authority and three agents in network namespaces")
	}
	nw := netns.New(t)
	srv := nw.AddNode("s")
	names := []string{"a", "b", "c"}
	var nodes []*wgNode
	for _, n := range names {
		nodes = append(nodes, &wgNode{nd: nw.AddNode(n)})
	}
	x := nw.AddNode("x") // the intruder: no agent
	cl := startClusterIn(t, srv, "wg.example", "")
	bundle := filepath.Join(cl.pub, "bundle.pem")
	cl.ward(t, "ca", "bundle", "-o", bundle)

	marker := []byte(fmt.Sprintf("plaintext-marker-%d", time.Now().UnixNano()))
	lw := &linkWatch{marker: marker, overlay: netip.MustParsePrefix("10.250.0.0/16"), intruder: netip.MustParseAddr(x.IP), wgPort: 51820}
	nw.Hub().Capture(t).OnIPv4(lw.packet)

	for i, w := range nodes {
		w.overlay = fmt.Sprintf("10.250.%d.1", i+1)
		w.id = "spiffe://wg.example/ward/agent/node-" + names[i]
		period := "24h"
		if names[i] == "a" {
			period = "10s"
		}
		token := strings.TrimSpace(cl.ward(t, "token", "create", "--ttl", "10m", "--agent-path", "node-"+names[i], "-q"))
		w.ag = e2e.StartAgentProcExtra(t, w.nd, "wg.example", e2e.PublicDir(t), cl.nodeAPI, bundle, token, fmt.Sprintf(`network:
  address: %s
  strict: true
  strict_cidrs: [10.250.0.0/16]
  rotation_period: %s
  rotation_overlap: 1s
`, w.overlay, period))
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, w := range nodes {
		w.waitNet(t, "both other nodes as peers", func(st *agent.NetworkStatus) bool {
			n := 0
			for _, o := range nodes {
				if o != w && hasPeer(st, o.id) {
					n++
				}
			}
			return st.Registered && n == 2
		})
	}
	echo := b.overlay + ":7000"
	echoOn(t, b.nd, echo)

	// 1. Through the tunnel.
	conn, err := dialTimeout(a.nd, echo, 10*time.Second)
	if err != nil {
		t.Fatalf("a cannot reach b's overlay address through the tunnel: %v", err)
	}
	defer conn.Close()
	if err := roundTrip(conn, append(append([]byte{}, marker...), '\n'), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st := a.waitNet(t, "a handshake with b and bytes both ways", func(st *agent.NetworkStatus) bool {
		for _, p := range st.Peers {
			if p.ID == b.id {
				return !p.LastHandshake.IsZero() && p.RxBytes > 0 && p.TxBytes > 0 && p.HandshakeAgeSeconds >= 0
			}
		}
		return false
	})
	t.Logf("a's tunnel table: %d peers, %d handshakes", len(st.Peers), st.Handshakes)
	table, err := a.nd.Run(e2e.WardBin, "agent", "status", "--address", a.ag.Health)
	if err != nil || !strings.Contains(table, "PEER") || !strings.Contains(table, b.id) || !strings.Contains(table, "10.250.2.1/32") {
		t.Fatalf("ward agent status: %v\n%s", err, table)
	}
	t.Logf("ward agent status in a:\n%s", table)
	metrics, err := a.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"ward_agent_network_peers 2", "ward_agent_network_handshakes_total ", "ward_agent_network_key_rotations_total ",
		`ward_agent_network_received_bytes_total{peer="` + b.id, `ward_agent_network_sent_bytes_total{peer="` + b.id,
		`ward_agent_network_last_handshake_age_seconds{peer="` + b.id} {
		if !strings.Contains(metrics, m) {
			t.Fatalf("a's /metrics lacks %q:\n%s", m, metrics)
		}
	}

	// 2. Attacks. An intruder with a WireGuard key the authority never
	// saw, configured with b's real key and endpoint.
	bst, err := b.netStatus(t)
	if err != nil {
		t.Fatal(err)
	}
	bKey, _ := wgnet.KeyFrom(bst.PublicKey)
	xKey, _ := wgnet.NewPrivateKey()
	var xdev *wgnet.Device
	if err := x.Do(func() (err error) {
		xdev, err = wgnet.Open(wgnet.Config{Interface: "ward0", ListenPort: 51820, Address: netip.MustParseAddr("10.250.9.1")}, xKey)
		if err != nil {
			return err
		}
		return xdev.SetPeers([]wgnet.Peer{{ID: "b", PublicKey: bKey, Endpoint: netip.MustParseAddrPort(b.nd.IP + ":51820"),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.250.2.0/24")}}})
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if c, err := dialTimeout(x, echo, 3*time.Second); err == nil {
			c.Close()
			t.Fatal("an unregistered WireGuard key reached b's overlay address")
		}
		if _, _, _, _, fromX := lw.counts(); fromX > 0 {
			break
		}
	}
	if _, _, _, _, fromX := lw.counts(); fromX == 0 {
		xs, _ := xdev.Stats()
		routes, _ := x.Run("ip", "route")
		addrs, _ := x.Run("ip", "addr")
		t.Logf("intruder: %+v\n%s\n%s", xs, routes, addrs)
		t.Fatal("the intruder's handshakes never crossed the link: the attack proves nothing")
	}
	xdev.Close()
	// In clear, routed to b's underlay address: strict mode on b drops it.
	if out, err := x.Run("ip", "route", "add", "10.250.0.0/16", "via", b.nd.IP); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if c, err := dialTimeout(x, echo, 3*time.Second); err == nil {
		c.Close()
		t.Fatal("b accepted a connection to its overlay address in clear")
	}
	if _, _, intruderC, _, _ := lw.counts(); intruderC == 0 {
		t.Fatal("the intruder's clear packets never crossed the link: the attack proves nothing")
	}
	// From a ward node to an overlay address without a peer: dropped.
	if c, err := dialTimeout(a.nd, "10.250.7.1:7000", 2*time.Second); err == nil {
		c.Close()
		t.Fatal("a reached an overlay address no peer routes")
	}

	// 3. a's key rotates under a running stream.
	keyBefore := st.PublicKey
	var streamed atomic.Int64
	stop := make(chan struct{})
	streamErr := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat(append(append([]byte{}, marker...), ' '), 32<<10/len(marker))
		for {
			select {
			case <-stop:
				streamErr <- nil
				return
			default:
			}
			if err := roundTrip(conn, chunk, 20*time.Second); err != nil {
				streamErr <- err
				return
			}
			streamed.Add(int64(len(chunk)))
			time.Sleep(5 * time.Millisecond)
		}
	}()
	a.waitNet(t, "a key rotation", func(st *agent.NetworkStatus) bool { return st.Rotations >= 1 })
	rotated := streamed.Load()
	waitUntil(t, "the stream going on after the rotation", func() bool { return streamed.Load() > rotated+256<<10 })
	close(stop)
	if err := <-streamErr; err != nil {
		t.Fatalf("the stream broke across a's key rotation: %v", err)
	}
	ast, _ := a.netStatus(t)
	if bytes.Equal(ast.PublicKey, keyBefore) {
		t.Fatal("a's public key did not change")
	}
	b.waitNet(t, "b using a's new key", func(st *agent.NetworkStatus) bool {
		for _, p := range st.Peers {
			if p.ID == a.id && bytes.Equal(p.PublicKey, ast.PublicKey) && len(p.AllowedIPs) > 0 {
				return true
			}
		}
		return false
	})
	t.Logf("stream of %d KiB survived a's key rotation", streamed.Load()>>10)

	// 4. Defense in depth: a ward proxy pair carries mTLS over the tunnel.
	defenseInDepth(t, cl, a, b, marker, lw)

	// 5. Evict c: its key leaves every peer, its traffic stops.
	cc, err := dialTimeout(c.nd, echo, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if err := roundTrip(cc, []byte("before eviction\n"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cl.ward(t, "agent", "evict", c.id)
	for _, w := range []*wgNode{a, b} {
		w.waitNet(t, "c's key removed", func(st *agent.NetworkStatus) bool { return !hasPeer(st, c.id) })
	}
	t.Logf("eviction: c's key gone from a and b %v after `ward agent evict` returned", time.Since(start).Round(time.Millisecond))
	if err := roundTrip(cc, []byte("after eviction\n"), 3*time.Second); err == nil {
		t.Fatal("c's open connection still works after its eviction")
	}
	if c2, err := dialTimeout(c.nd, echo, 3*time.Second); err == nil {
		c2.Close()
		t.Fatal("c connects after its eviction")
	}

	lw.wantOnlyWireGuard(t)
}

// defenseInDepth runs a ward proxy pair between a and b over the tunnel
// and checks both layers: mTLS inside (b's access log names a's client;
// on b's WireGuard interface the proxied connection is TLS records only),
// WireGuard outside (the link sees no TCP of the overlay, no marker).
func defenseInDepth(t *testing.T, cl *cluster, a, b *wgNode, marker []byte, lw *linkWatch) {
	t.Helper()
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	clientID, apiID := "spiffe://wg.example/client", "spiffe://wg.example/api"
	cl.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", a.id, "--selector", uid)
	cl.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", b.id, "--selector", uid)
	dir := e2e.PublicDir(t)
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal, action == Action::"connect", resource == Service::"api") when { principal.path == "/client" };`), 0o600)
	cl.ward(t, "policy", "apply", pol)
	const inboundPort = 9443
	inbound := fmt.Sprintf("%s:%d", b.overlay, inboundPort)
	policySock := func(w *wgNode) string { return filepath.Join(filepath.Dir(w.ag.Socket), "policy.sock") }
	logB := crossProxy(t, b.nd, dir, "b", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
allow_non_loopback: true
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
`, b.ag.Socket, policySock(b), inbound, echoServer(t, filepath.Join(dir, "b-app.sock"))))
	outbound := filepath.Join(dir, "to-api.sock")
	logA := crossProxy(t, a.nd, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
outbound:
  - name: to-api
    listen: unix://%s
    remote: %s
    server_id: %s
`, a.ag.Socket, policySock(a), outbound, inbound, apiID))
	inside := b.nd.Capture(t) // every interface of b, ward0 included
	msg := string(marker) + " through both layers"
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("unix", outbound, 5*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "%s\n", msg)
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && line == "echo "+msg+"\n" {
				break
			}
			err = fmt.Errorf("reply %q: %v", line, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no round trip through the proxy pair over the tunnel: %v\nproxy a:\n%s\nproxy b:\n%s", err, e2e.Tail(logA.String(), 2000), e2e.Tail(logB.String(), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitUntil(t, "b's access log line", func() bool { return strings.Contains(logB.String(), `"peer_id":"`+clientID+`"`) })
	if !strings.Contains(logB.String(), `"decision":"allow"`) {
		t.Fatalf("b's proxy did not decide allow for a's client:\n%s", e2e.Tail(logB.String(), 2000))
	}
	time.Sleep(300 * time.Millisecond)
	inside.Stop()
	checked := 0
	for _, f := range inside.Flows() {
		if f.Dst.Port != inboundPort && f.Src.Port != inboundPort || len(f.Payload) == 0 {
			continue
		}
		if bytes.Contains(f.Payload, marker) {
			t.Fatalf("the application's bytes crossed %s -> %s in clear inside the tunnel", f.Src, f.Dst)
		}
		if !f.SYN {
			continue
		}
		if err := onlyTLSAfterHello(f.Payload, f.Dst.Port == inboundPort); err != nil {
			t.Fatalf("%s -> %s inside the tunnel: %v", f.Src, f.Dst, err)
		}
		if !strings.HasPrefix(f.Src.String(), "10.250.") || !strings.HasPrefix(f.Dst.String(), "10.250.") {
			t.Fatalf("the proxied connection %s -> %s is not between overlay addresses", f.Src, f.Dst)
		}
		checked++
	}
	if checked < 2 {
		t.Fatalf("captured too little inside the tunnel to prove anything (%d directions)", checked)
	}
	if markers, clear, _, _, _ := lw.counts(); markers != 0 || clear != 0 {
		t.Fatalf("on the link: %d packets with the marker, %d overlay packets in clear", markers, clear)
	}
	t.Logf("defense in depth: %d TLS directions between overlay addresses inside the tunnel, b decided allow for %s; on the link only WireGuard", checked, clientID)
}
