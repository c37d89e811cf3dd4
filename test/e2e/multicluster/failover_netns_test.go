package multicluster

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/testutil/netns"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestServiceFailoverInNetworkNamespaces is scenario 3 with each cluster
// in its own network namespace and B's failure a partition: B's link goes
// down under load, so connections to B's gateway are black-holed (no
// refusal, only the dial timeout). A's `service: api@b.example` with
// failover to c.example continues to C after one dial timeout per
// connection in flight, then skips B for failover_hold instead of timing
// out on every connection; B healed, traffic returns to B. It reports the
// times and counts; no answer ever comes from anything but B's or C's api.
func TestServiceFailoverInNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three clusters in network namespaces")
	}
	nw := netns.New(t)
	tds := []string{"a.example", "b.example", "c.example"}
	nodes := make([]*netns.Node, 3)
	cs := make([]*cluster, 3)
	for i, td := range tds {
		nodes[i] = nw.AddNode(td[:1])
		cs[i] = startClusterIn(t, nodes[i], td, "  refresh_min: 1s\n")
	}
	for _, x := range cs {
		for _, y := range cs {
			if x != y {
				x.ward(t, "federation", "add", y.td, "--endpoint", y.bundleURL, "--bundle", filepath.Join(y.pub, y.td+".json"))
			}
		}
	}
	a, dir := cs[0], t.TempDir()
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	a.ward(t, "entry", "create", "--spiffe-id", "spiffe://a.example/client", "--parent", "spiffe://a.example/ward/agent/node-1", "--selector", uid,
		"--federates-with", "b.example", "--federates-with", "c.example")
	polA := filepath.Join(dir, "a.cedar")
	os.WriteFile(polA, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource);`), 0o600)
	a.ward(t, "policy", "apply", polA)
	agA := a.agent(t)
	for i, c := range cs[1:] {
		nd := nodes[i+1]
		apiID := "spiffe://" + c.td + "/api"
		c.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", "spiffe://"+c.td+"/ward/agent/node-1", "--selector", uid, "--federates-with", "a.example")
		pol := filepath.Join(dir, c.td+".cedar")
		os.WriteFile(pol, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" && principal.path == "/client" };`), 0o600)
		c.ward(t, "policy", "apply", pol)
		ag := c.agent(t)
		inbound := "127.0.0.1:9443"
		crossProxy(t, nd, dir, c.td, fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
    service: {name: api, port: 8443}
`, ag.Socket, filepath.Join(c.pub, "policy.sock"), inbound, taggedEcho(t, c.td, filepath.Join(dir, c.td+"-app.sock"))))
		c.ward(t, "service", "export", "api", "--forward", inbound, "--spiffe-id", apiID, "--gateway", nd.Addr(15443))
		cfg := filepath.Join(dir, "gw-"+c.td+".yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("listen: %s\ntrust_domain: %s\naccess_log: stdout\ncatalog_socket: unix://%s\n",
			nd.Addr(15443), c.td, filepath.Join(c.pub, "policy.sock"))), 0o600)
		g := nd.Command(0, e2e.WardBin, "gateway", "--config", cfg)
		g.Stdout, g.Stderr = &syncbuf.Buffer{}, &syncbuf.Buffer{}
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e2e.StopProcess(g) })
	}
	waitUntil(t, "A's catalog lists api in b.example and c.example", func() bool {
		return strings.Count(a.ward(t, "service", "list"), "imported") == 2
	})
	outbound := filepath.Join(dir, "to-api.sock")
	logA := crossProxy(t, nodes[0], dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
dial_timeout: 1s
outbound:
  - name: to-api
    listen: unix://%s
    service: api@b.example
    failover: [c.example]
    failover_hold: 2s
`, agA.Socket, filepath.Join(a.pub, "policy.sock"), outbound))
	call := func() (string, error) {
		c, err := net.DialTimeout("unix", outbound, 5*time.Second)
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
		return strings.TrimSuffix(line, " hello\n"), nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := call()
		if got == "b.example" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from B: %q %v\n%s", got, err, e2e.Tail(logA.String(), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}

	type result struct {
		start, end time.Time
		answer     string
		err        error
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
				t0 := time.Now()
				got, err := call()
				mu.Lock()
				results = append(results, result{t0, time.Now(), got, err})
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	answered := func(from time.Time, who string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range results {
			if r.start.After(from) && r.err == nil && r.answer == who {
				return true
			}
		}
		return false
	}
	waitUntil(t, "load answered by B", func() bool { return answered(time.Now().Add(-time.Second), "b.example") })
	cut := time.Now()
	nodes[1].Partition()
	waitUntil(t, "traffic continues to C", func() bool { return answered(cut, "c.example") })
	time.Sleep(5 * time.Second) // several failover_hold periods: B retried, still black-holed
	healed := time.Now()
	nodes[1].Heal()
	waitUntil(t, "traffic returns to B", func() bool { return answered(healed, "b.example") })
	close(stop)
	wg.Wait()

	counts := map[string]int{}
	var firstC, back, slowest time.Duration
	slow := 0
	for _, r := range results {
		if r.err != nil {
			counts["error"]++
		} else {
			counts[r.answer]++
		}
		if r.start.After(cut) && r.start.Before(healed) {
			if d := r.end.Sub(r.start); d > slowest {
				slowest = d
			}
			if r.end.Sub(r.start) > 900*time.Millisecond {
				slow++ // waited for a dial timeout to B
			}
			if firstC == 0 && r.err == nil && r.answer == "c.example" {
				firstC = r.end.Sub(cut)
			}
		}
		if back == 0 && r.start.After(healed) && r.err == nil && r.answer == "b.example" {
			back = r.end.Sub(healed)
		}
	}
	total := 0
	for _, r := range results {
		if r.start.After(cut) && r.start.Before(healed) {
			total++
		}
	}
	t.Logf("requests: %v; B partitioned: first answer from C %s after the cut; %d of %d requests during the partition waited a dial timeout (slowest %s); healed: back to B after %s",
		counts, firstC, slow, total, slowest, back)
	for answer := range counts {
		if answer != "b.example" && answer != "c.example" && answer != "error" {
			t.Fatalf("unexpected answer %q", answer)
		}
	}
	for _, line := range strings.Split(logA.String(), "\n") {
		if strings.Contains(line, `"direction":"outbound"`) && strings.Contains(line, `"outcome":"closed"`) &&
			!(strings.Contains(line, `"service":"api@b.example"`) && strings.Contains(line, `"peer_id":"spiffe://b.example/api"`)) &&
			!(strings.Contains(line, `"service":"api@c.example"`) && strings.Contains(line, `"peer_id":"spiffe://c.example/api"`)) {
			t.Fatalf("an outbound connection without the expected identity: %s", line)
		}
	}
}
