package multicluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/wardproject/ward/internal/testutil/netutil"
)

// TestBenchFederation is bench/federation/run.sh (with
// TestBenchCrossClusterRevocation): on one pair of clusters (loopback,
// real processes), side by side in one run,
//
//   - three paths to the same echo app in B: direct (no proxy), same-cluster
//     (a proxy of B to B's inbound proxy) and cross-cluster (A's proxy to
//     B's inbound proxy, A's SVID checked with the federated bundle): new
//     connections per second (closed loop, each a new mTLS handshake
//     between the proxies and one round trip) and the latency of one new
//     connection's round trip (p50, p99; samples interleaved across the
//     paths), with the added latency over direct and the ratios;
//   - RUNS times (WARD_BENCH_ROTATE_RUNS, default 5) a root rotation in A:
//     the time from `ward ca rotate --root --prepare` in A (B's operator
//     runs `ward federation refresh` right after) to a workload of B (this
//     test, through go-spiffe's X509Source on B's agent) holding A's new
//     root; then the root is activated.
//
// Skipped unless WARD_BENCH_FEDERATION is set (not part of the suite).
func TestBenchFederation(t *testing.T) {
	if os.Getenv("WARD_BENCH_FEDERATION") == "" {
		t.Skip("a benchmark: bench/federation/run.sh")
	}
	samples := envInt("WARD_BENCH_SAMPLES", 1000)
	loop := time.Duration(envInt("WARD_BENCH_LOOP_SECONDS", 3)) * time.Second
	workers := envInt("WARD_BENCH_CONNS", 4)
	rotations := envInt("WARD_BENCH_ROTATE_RUNS", 5)

	e := startCrossCluster(t)
	dir := t.TempDir()
	same := filepath.Join(dir, "same.cedar")
	os.WriteFile(same, []byte(`permit(principal == Workload::"spiffe://b.example/api", action == Action::"connect", resource == Service::"api");`), 0o600)
	e.b.ward(t, "policy", "apply", e.polB, same)
	sameAddr := netutil.FreeLoopbackAddr(t)
	crossProxy(t, nil, dir, "b-out", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
outbound:
  - name: to-own-api
    listen: %s
    remote: %s
    server_id: %s
`, e.agB.Socket, filepath.Join(e.b.pub, "policy.sock"), sameAddr, e.inboundB, e.apiID))
	c, _ := e.waitRoundTo(t, sameAddr, 60*time.Second)
	c.Close()

	paths := []struct{ name, addr string }{{"direct", e.appB}, {"same-cluster", sameAddr}, {"cross-cluster", e.outbound}}
	// Warm up every path, then the latency samples, interleaved.
	lat := make([][]time.Duration, len(paths))
	for i := range samples + 50 {
		for p, path := range paths {
			t0 := time.Now()
			c, _, err := crossRound(path.addr)
			d := time.Since(t0)
			if err != nil {
				t.Fatalf("%s: %v", path.name, err)
			}
			c.Close()
			if i >= 50 {
				lat[p] = append(lat[p], d)
			}
		}
	}
	// Connection rates: each path for loop, twice, in turns.
	rate := make([]float64, len(paths))
	for range 2 {
		for p, path := range paths {
			n, fails := connLoop(path.addr, workers, loop)
			if fails > 0 {
				t.Fatalf("%s: %d failed connections in the closed loop", path.name, fails)
			}
			rate[p] += float64(n) / loop.Seconds() / 2
		}
	}
	fmt.Printf("BENCH handshakes: %d workers x %s x 2 per path; latency of a new connection's round trip over %d interleaved samples\n", workers, loop, samples)
	fmt.Printf("BENCH %-14s %12s %10s %10s %14s\n", "path", "conns/s", "p50", "p99", "p99 added")
	p99 := make([]time.Duration, len(paths))
	for p, path := range paths {
		slices.Sort(lat[p])
		p99[p] = pct(lat[p], 99)
		fmt.Printf("BENCH %-14s %12.0f %10s %10s %14s\n", path.name, rate[p], pct(lat[p], 50).Round(time.Microsecond),
			p99[p].Round(time.Microsecond), (p99[p] - p99[0]).Round(time.Microsecond))
	}
	fmt.Printf("BENCH cross/same: conns/s %.2f, p50 %.2f, p99 %.2f, p99 added over direct %.2f\n", rate[2]/rate[1],
		float64(pct(lat[2], 50))/float64(pct(lat[1], 50)), float64(p99[2])/float64(p99[1]), float64(p99[2]-p99[0])/float64(p99[1]-p99[0]))

	// Root rotations in A: until B's workload holds the new root.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+e.agB.Socket)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tdA := spiffeid.RequireTrustDomainFromString("a.example")
	roots := func() [][]byte {
		b, err := src.GetX509BundleForTrustDomain(tdA)
		if err != nil {
			t.Fatalf("B's workload has no bundle of a.example: %v", err)
		}
		var out [][]byte
		for _, c := range b.X509Authorities() {
			out = append(out, c.Raw)
		}
		return out
	}
	var ds, refreshed []time.Duration
	for i := range rotations {
		before := roots()
		t0 := time.Now()
		e.a.ward(t, "ca", "rotate", "--root", "--prepare")
		e.b.ward(t, "federation", "refresh", "a.example")
		tr := time.Since(t0)
		deadline := t0.Add(time.Minute)
		for !hasNew(roots(), before) {
			if time.Now().After(deadline) {
				t.Fatalf("run %d: B's workload never held A's new root", i+1)
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := time.Since(t0)
		ds, refreshed = append(ds, d), append(refreshed, tr)
		fmt.Printf("rotate %d: ward ca rotate --root --prepare in A -> B's workload holds the new root in %s (ward federation refresh in B returned at %s)\n",
			i+1, d.Round(100*time.Microsecond), tr.Round(100*time.Microsecond))
		e.a.ward(t, "ca", "rotate", "--root")
	}
	slices.Sort(ds)
	slices.Sort(refreshed)
	fmt.Printf("BENCH root rotation in A -> B's workloads hold the new root, over %d runs: median %s, max %s (of which the two CLI calls: median %s)\n",
		rotations, ds[len(ds)/2].Round(100*time.Microsecond), ds[len(ds)-1].Round(100*time.Microsecond), refreshed[len(refreshed)/2].Round(100*time.Microsecond))
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// pct is the p-th percentile of sorted ds.
func pct(ds []time.Duration, p int) time.Duration {
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

func hasNew(now, before [][]byte) bool {
	for _, r := range now {
		if !slices.ContainsFunc(before, func(b []byte) bool { return bytes.Equal(b, r) }) {
			return true
		}
	}
	return false
}

// connLoop runs workers closed loops of new connections with one round
// trip each through addr for d; it returns how many succeeded and failed.
func connLoop(addr string, workers int, d time.Duration) (ok, fails int64) {
	var n, f atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				c, _, err := crossRound(addr)
				if err != nil {
					f.Add(1)
					continue
				}
				c.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return n.Load(), f.Load()
}
