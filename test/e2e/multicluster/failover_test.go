package multicluster

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// taggedEcho answers every line with "<tag> LINE", on loopback or, with
// sock set, on that unix socket (returned as unix:///path).
func taggedEcho(t *testing.T, tag string, sock ...string) string {
	t.Helper()
	network, addr := "tcp", "127.0.0.1:0"
	if len(sock) > 0 {
		network, addr = "unix", sock[0]
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", tag, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	if network == "unix" {
		return "unix://" + addr
	}
	return l.Addr().String()
}

// startGateway runs `ward gateway` with cfg.
func startGateway(t *testing.T, dir, name, cfg string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	p := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e2e.WardBin, "gateway", "--config", p)
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2e.StopProcess(cmd) })
	return cmd, logs
}

// impostor listens on addr with a self-signed certificate that claims
// B's api ID and answers every line with "impostor LINE": what an attacker
// who took B's gateway address would serve.
func impostor(t *testing.T, addr string) (net.Listener, *atomic.Int64) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	uri, _ := url.Parse("spiffe://b.example/api")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{uri}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	deadline := time.Now().Add(10 * time.Second)
	for {
		if l, err = tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("impostor on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var handshakes atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					handshakes.Add(1)
				}
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "impostor %s", line)
				}
			}()
		}
	}()
	return l, &handshakes
}

// TestServiceFailoverThroughGateways is issue 12's scenario 3 on loopback,
// as real processes: three federated clusters; B and C export api with
// `ward service export` and run a gateway each whose routes follow the
// catalog; A's outbound listener names `service: api@b.example` with
// failover to c.example, and nothing else (no address, no SNI, no SPIFFE
// ID). Under load, B's gateway is killed (SIGKILL) and an impostor takes
// its address (a TLS server claiming B's api ID with a self-signed
// certificate): traffic continues to C, no request is answered by the
// impostor; B's gateway back, traffic returns to B. It reports the time
// to fail over and to return.
func TestServiceFailoverThroughGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three authorities, agents and proxies and two gateways")
	}
	tds := []string{"a.example", "b.example", "c.example"}
	cs := make([]*cluster, len(tds))
	for i, td := range tds {
		cs[i] = startCluster(t, td)
	}
	for _, x := range cs {
		for _, y := range cs {
			if x != y {
				x.ward(t, "federation", "add", y.td, "--endpoint", y.bundleURL, "--bundle", filepath.Join(y.pub, y.td+".json"))
			}
		}
	}
	a := cs[0]
	dir := t.TempDir()
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	a.ward(t, "entry", "create", "--spiffe-id", "spiffe://a.example/client", "--parent", "spiffe://a.example/ward/agent/node-1", "--selector", uid,
		"--federates-with", "b.example", "--federates-with", "c.example")
	polA := filepath.Join(dir, "a.cedar")
	os.WriteFile(polA, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource);`), 0o600)
	a.ward(t, "policy", "apply", polA)
	agA := a.agent(t)
	agA.WaitStatus("1 SVID", func(st e2e.AgentStatus) bool { return st.SVIDs == 1 })

	gws := map[string]string{}
	gwCfg, gwAdmin := map[string]string{}, map[string]string{}
	gwCmd := map[string]*exec.Cmd{}
	gwLog := map[string]*syncbuf.Buffer{}
	for _, c := range cs[1:] {
		apiID := "spiffe://" + c.td + "/api"
		c.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", "spiffe://"+c.td+"/ward/agent/node-1", "--selector", uid, "--federates-with", "a.example")
		pol := filepath.Join(dir, c.td+".cedar")
		os.WriteFile(pol, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" && principal.path == "/client" };`), 0o600)
		c.ward(t, "policy", "apply", pol)
		ag := c.agent(t)
		ag.WaitStatus("1 SVID", func(st e2e.AgentStatus) bool { return st.SVIDs == 1 })
		inbound, gw := netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t)
		crossProxy(t, nil, dir, c.td, fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
    service: {name: api, port: 8443}
`, ag.Socket, filepath.Join(c.pub, "policy.sock"), inbound, taggedEcho(t, c.td)))
		out := c.ward(t, "service", "export", "api", "--forward", inbound, "--spiffe-id", apiID, "--gateway", gw)
		if !strings.Contains(out, "api."+c.td+".ward") {
			t.Fatalf("ward service export: %s", out)
		}
		gws[c.td] = gw
		admin := netutil.FreeLoopbackAddr(t)
		gwAdmin[c.td] = admin
		gwCfg[c.td] = fmt.Sprintf("listen: %s\ntrust_domain: %s\nadmin_address: %s\naccess_log: stdout\ncatalog_socket: unix://%s\n", gw, c.td, admin, filepath.Join(c.pub, "policy.sock"))
		gwCmd[c.td], gwLog[c.td] = startGateway(t, dir, "gw-"+c.td, gwCfg[c.td])
	}
	// A gateway is ready once the catalog gave it its routes.
	ready := func(td string) {
		t.Helper()
		waitUntil(t, td+"'s gateway ready with the route of api", func() bool {
			resp, err := http.Get("http://" + gwAdmin[td] + "/readyz")
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200 && strings.Contains(string(b), "api."+td+".ward")
		})
	}
	ready("b.example")
	ready("c.example")
	// A learns both exports over the catalog channel.
	waitUntil(t, "A's catalog lists api in b.example and c.example", func() bool {
		out := a.ward(t, "service", "list")
		return strings.Count(out, "imported") == 2 && strings.Contains(out, gws["b.example"]) && strings.Contains(out, gws["c.example"])
	})
	t.Logf("ward service list (A):\n%s", a.ward(t, "service", "list"))
	if out := cs[1].ward(t, "service", "list"); !strings.Contains(out, "local (api)") || !strings.Contains(out, "exported") {
		t.Fatalf("ward service list (B):\n%s", out)
	}

	outbound := netutil.FreeLoopbackAddr(t)
	logA := crossProxy(t, nil, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
dial_timeout: 1s
outbound:
  - name: to-api
    listen: %s
    service: api@b.example
    failover: [c.example]
    failover_hold: 1s
`, agA.Socket, filepath.Join(a.pub, "policy.sock"), outbound))

	// One request per connection: every one chooses its cluster anew.
	call := func() (string, error) {
		c, err := net.DialTimeout("tcp", outbound, 5*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "hello\n"); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", err
		}
		return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), " hello"), nil
	}
	waitUntil(t, "a first answer from B", func() bool { got, _ := call(); return got == "b.example" })

	type result struct {
		at     time.Time
		answer string
		err    error
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := call()
				mu.Lock()
				results = append(results, result{time.Now(), got, err})
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	answeredBy := func(from time.Time, who string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range results {
			if r.at.After(from) && r.err == nil && r.answer == who {
				return true
			}
		}
		return false
	}
	waitUntil(t, "load answered by B", func() bool { return answeredBy(time.Now().Add(-time.Second), "b.example") })

	// B's gateway dies; an impostor takes its address.
	killed := time.Now()
	gwCmd["b.example"].Process.Kill()
	gwCmd["b.example"].Wait()
	imp, impHandshakes := impostor(t, gws["b.example"])
	waitUntil(t, "traffic continues to C", func() bool { return answeredBy(killed, "c.example") })
	var failover time.Duration
	mu.Lock()
	for _, r := range results {
		if r.at.After(killed) && r.err == nil && r.answer == "c.example" {
			failover = r.at.Sub(killed)
			break
		}
	}
	mu.Unlock()
	time.Sleep(2 * time.Second) // C carries the load, B's address answered by the impostor
	imp.Close()

	// B's gateway back: traffic returns to B by preference.
	back := time.Now()
	gwCmd["b.example"], gwLog["b.example"] = startGateway(t, dir, "gw-b.example-again", gwCfg["b.example"])
	ready("b.example")
	waitUntil(t, "traffic returns to B", func() bool { return answeredBy(back, "b.example") })
	close(stop)
	wg.Wait()

	var returned time.Duration
	counts := map[string]int{}
	var failedDuring int
	var lastErr error
	for _, r := range results {
		if r.err != nil {
			counts["error"]++
			if r.at.After(killed) && r.at.Before(killed.Add(failover)) {
				failedDuring++
			}
			lastErr = r.err
			continue
		}
		counts[r.answer]++
		if returned == 0 && r.at.After(back) && r.answer == "b.example" {
			returned = r.at.Sub(back)
		}
	}
	t.Logf("requests: %v; failover to C %s after B's gateway was killed (%d requests failed meanwhile); back to B %s after its gateway restarted; impostor handshakes completed by A's proxy: %d (last error: %v)",
		counts, failover, failedDuring, returned, impHandshakes.Load(), lastErr)
	if counts["impostor"] != 0 {
		t.Fatalf("%d requests answered by the impostor", counts["impostor"])
	}
	for answer := range counts {
		if answer != "b.example" && answer != "c.example" && answer != "error" {
			t.Fatalf("unexpected answer %q", answer)
		}
	}
	// Every connection A's proxy forwarded verified the api ID of the
	// cluster it reached.
	for _, line := range strings.Split(logA.String(), "\n") {
		if !strings.Contains(line, `"direction":"outbound"`) || !strings.Contains(line, `"outcome":"closed"`) {
			continue
		}
		switch {
		case strings.Contains(line, `"service":"api@b.example"`) && strings.Contains(line, `"peer_id":"spiffe://b.example/api"`):
		case strings.Contains(line, `"service":"api@c.example"`) && strings.Contains(line, `"peer_id":"spiffe://c.example/api"`):
		default:
			t.Fatalf("an outbound connection without the expected identity: %s", line)
		}
	}
	if !strings.Contains(logA.String(), `"failovers":1`) {
		t.Errorf("A's access log records no failover:\n%s", e2e.Tail(logA.String(), 2000))
	}
	if !strings.Contains(gwLog["c.example"].String(), `"sni":"api.c.example.ward"`) {
		t.Errorf("C's gateway did not route api.c.example.ward:\n%s", e2e.Tail(gwLog["c.example"].String(), 2000))
	}

	// Only exported services are routable: B unexports api, its gateway
	// drops the route (a ClientHello for it is refused as unknown_sni) and
	// A's catalog drops B, so A's calls go to C.
	cs[1].ward(t, "service", "unexport", "api")
	waitUntil(t, "B's gateway without the route of api", func() bool {
		resp, err := http.Get("http://" + gwAdmin["b.example"] + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return !strings.Contains(string(b), "api.b.example.ward")
	})
	if c, err := tls.Dial("tcp", gws["b.example"], &tls.Config{ServerName: "api.b.example.ward", InsecureSkipVerify: true}); err == nil {
		c.Close()
		t.Fatal("B's gateway still routes api.b.example.ward after the unexport")
	}
	waitUntil(t, "the refusal counted as unknown_sni", func() bool {
		return strings.Contains(gwLog["b.example"].String(), `"reason":"unknown_sni","sni":"api.b.example.ward"`)
	})
	waitUntil(t, "A's catalog without B's api", func() bool { return !strings.Contains(a.ward(t, "service", "list"), "b.example") })
	waitUntil(t, "A's calls answered by C", func() bool { got, _ := call(); return got == "c.example" })
}
