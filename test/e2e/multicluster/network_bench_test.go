package multicluster

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/testutil/netns"
)

// benchServe answers the bench protocol on c: a first byte 'S' (sink:
// an 8-byte length, that many bytes, then one byte back) or 'E' (echo
// until the end).
func benchServe(c net.Conn) {
	defer c.Close()
	mode := make([]byte, 1)
	if _, err := io.ReadFull(c, mode); err != nil {
		return
	}
	switch mode[0] {
	case 'S':
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(n[:]))); err != nil {
			return
		}
		c.Write([]byte{1})
	case 'E':
		io.Copy(c, c)
	}
}

func benchListen(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go benchServe(c)
		}
	}()
}

// benchPath is one way from a to b's app.
type benchPath struct {
	name string
	dial func() (net.Conn, error)
}

// throughput sends size bytes on one connection; bytes per second.
func (p benchPath) throughput(size int64) (float64, error) {
	c, err := p.dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	hdr := make([]byte, 9)
	hdr[0] = 'S'
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	buf := make([]byte, 256<<10)
	start := time.Now()
	if _, err := c.Write(hdr); err != nil {
		return 0, err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:n]); err != nil {
			return 0, err
		}
		left -= n
	}
	if _, err := io.ReadFull(c, hdr[:1]); err != nil {
		return 0, err
	}
	return float64(size) / time.Since(start).Seconds(), nil
}

// TestBenchNetworkEncryption is bench/wireguard/run.sh: between two nodes
// (network namespaces on one bridge), side by side in one run, a single
// stream's throughput (SIZE_MB per run, the median of RUNS runs) and the
// round-trip latency of 64-byte messages on one connection (p50, p99 of
// SAMPLES, interleaved across the paths) of:
//
//   - plain: TCP between the nodes' addresses on the link;
//   - wireguard: TCP between their overlay addresses, through ward's
//     userspace WireGuard tunnel;
//   - mtls: a ward proxy pair (a's outbound to b's inbound, on the link);
//   - both: the same proxy pair between the overlay addresses.
//
// Skipped unless WARD_BENCH_NETWORK is set (not part of the suite).
func TestBenchNetworkEncryption(t *testing.T) {
	if os.Getenv("WARD_BENCH_NETWORK") == "" {
		t.Skip("a benchmark: bench/wireguard/run.sh")
	}
	size := int64(envInt("WARD_BENCH_SIZE_MB", 256)) << 20
	runs := envInt("WARD_BENCH_RUNS", 3)
	samples := envInt("WARD_BENCH_SAMPLES", 2000)

	nw := netns.New(t)
	srv := nw.AddNode("s")
	cl := startClusterIn(t, srv, "wg.example", "")
	bundle := filepath.Join(cl.pub, "bundle.pem")
	cl.ward(t, "ca", "bundle", "-o", bundle)
	var nodes []*wgNode
	for i, n := range []string{"a", "b"} {
		w := &wgNode{nd: nw.AddNode(n), overlay: fmt.Sprintf("10.250.%d.1", i+1), id: "spiffe://wg.example/ward/agent/node-" + n}
		token := strings.TrimSpace(cl.ward(t, "token", "create", "--ttl", "10m", "--agent-path", "node-"+n, "-q"))
		w.ag = e2e.StartAgentProcExtra(t, w.nd, "wg.example", e2e.PublicDir(t), cl.nodeAPI, bundle, token,
			fmt.Sprintf("network:\n  address: %s\n  strict: true\n  strict_cidrs: [10.250.0.0/16]\n", w.overlay))
		nodes = append(nodes, w)
	}
	a, b := nodes[0], nodes[1]
	for _, w := range nodes {
		o := a
		if w == a {
			o = b
		}
		w.waitNet(t, "the other node as peer", func(st *agent.NetworkStatus) bool { return hasPeer(st, o.id) })
	}
	// b's app: TCP on the link address and on the overlay address, and a
	// unix socket for the inbound proxy.
	for _, addr := range []string{b.nd.Addr(7100), b.overlay + ":7100"} {
		var ln net.Listener
		if err := b.nd.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
			t.Fatal(err)
		}
		benchListen(t, ln)
	}
	dir := e2e.PublicDir(t)
	appSock := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", appSock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(appSock, 0o777)
	benchListen(t, ln)

	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	clientID, apiID := "spiffe://wg.example/client", "spiffe://wg.example/api"
	cl.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", a.id, "--selector", uid)
	cl.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", b.id, "--selector", uid)
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal, action == Action::"connect", resource) when { principal.path == "/client" };`), 0o600)
	cl.ward(t, "policy", "apply", pol)
	policySock := func(w *wgNode) string { return filepath.Join(filepath.Dir(w.ag.Socket), "policy.sock") }
	crossProxy(t, b.nd, dir, "b", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
allow_non_loopback: true
access_log: off
inbound:
  - name: link
    listen: %s
    forward: unix://%s
  - name: overlay
    listen: %s:9443
    forward: unix://%s
`, b.ag.Socket, policySock(b), b.nd.Addr(9443), appSock, b.overlay, appSock))
	crossProxy(t, a.nd, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: off
outbound:
  - name: link
    listen: unix://%s/link.sock
    remote: %s
    server_id: %s
  - name: overlay
    listen: unix://%s/overlay.sock
    remote: %s:9443
    server_id: %s
`, a.ag.Socket, policySock(a), dir, b.nd.Addr(9443), apiID, dir, b.overlay, apiID))
	unixDial := func(name string) func() (net.Conn, error) {
		return func() (net.Conn, error) { return net.Dial("unix", filepath.Join(dir, name)) }
	}
	paths := []benchPath{
		{"plain", func() (net.Conn, error) { return a.nd.Dial(b.nd.Addr(7100)) }},
		{"wireguard", func() (net.Conn, error) { return a.nd.Dial(b.overlay + ":7100") }},
		{"mtls", unixDial("link.sock")},
		{"both", unixDial("overlay.sock")},
	}
	// Every path works before measuring (the proxies need their SVIDs).
	for _, p := range paths {
		waitUntil(t, p.name+" answering", func() bool { _, err := p.throughput(1 << 10); return err == nil })
	}

	tput := map[string][]float64{}
	for r := range runs {
		for _, p := range paths {
			bps, err := p.throughput(size)
			if err != nil {
				t.Fatalf("%s run %d: %v", p.name, r, err)
			}
			tput[p.name] = append(tput[p.name], bps)
		}
	}
	conns := map[string]net.Conn{}
	for _, p := range paths {
		c, err := p.dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{'E'})
		conns[p.name] = c
	}
	lat := map[string][]time.Duration{}
	msg, got := make([]byte, 64), make([]byte, 64)
	for i := range samples {
		for _, p := range paths {
			c := conns[p.name]
			c.SetDeadline(time.Now().Add(30 * time.Second))
			start := time.Now()
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("%s sample %d: %v", p.name, i, err)
			}
			lat[p.name] = append(lat[p.name], time.Since(start))
		}
	}
	median := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	pct := func(v []time.Duration, q float64) time.Duration {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[min(len(s)-1, int(q*float64(len(s))))]
	}
	base := median(tput["plain"])
	baseP99 := pct(lat["plain"], 0.99)
	for _, p := range paths {
		mbps := median(tput[p.name]) * 8 / 1e6
		p50, p99 := pct(lat[p.name], 0.50), pct(lat[p.name], 0.99)
		fmt.Printf("BENCH %-10s throughput %8.0f Mbit/s (%.2fx plain)  rtt p50 %6.0f µs  p99 %6.0f µs (%.2fx plain)\n",
			p.name, mbps, median(tput[p.name])/base, float64(p50.Microseconds()), float64(p99.Microseconds()), float64(p99)/float64(baseP99))
	}
	fmt.Printf("BENCH (%d runs of %d MiB, median; %d round trips of 64 bytes per path, interleaved)\n", runs, size>>20, samples)
}
