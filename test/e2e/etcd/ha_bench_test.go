package etcd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// TestHABench measures for bench/ha/run.sh (WARD_HA_BENCH=1; skipped
// otherwise): KMS encrypt calls/s and p99 through the failover client over
// three authorities on a three-member etcd (TLS), beside one authority on
// bbolt, in the same run; and the leader takeover time after SIGKILL over
// WARD_HA_TAKEOVERS runs (default 10). Lines starting "ha-bench:" are
// what the script reads.
func TestHABench(t *testing.T) {
	if os.Getenv("WARD_HA_BENCH") == "" {
		t.Skip("set WARD_HA_BENCH=1 (bench/ha/run.sh)")
	}
	dur := 10 * time.Second
	if v := os.Getenv("WARD_HA_BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	callers := 16
	runs := 10
	if v, err := strconv.Atoi(os.Getenv("WARD_HA_TAKEOVERS")); err == nil && v > 0 {
		runs = v
	}
	const ttl = 3 * time.Second

	// One authority on bbolt.
	dir := filepath.Join(t.TempDir(), "single")
	os.MkdirAll(dir, 0o700)
	single := e2e.StartServer(t, dir, e2e.WriteConfig(t, dir, fmt.Sprintf("seal:\n  type: keyfile\n  key_file: %s\n", filepath.Join(dir, "..", "seal.key"))))
	ctx := context.Background()
	if _, err := single.Client().Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	rate, p99 := haKMSLoad(t, single.Addr, callers, dur)
	fmt.Printf("ha-bench: single-bbolt calls_per_s=%.0f p99_ms=%.2f\n", rate, p99)

	h := startHACluster(t, ttl)
	h.leader()
	rate3, p993 := haKMSLoad(t, h.addresses(), callers, dur)
	fmt.Printf("ha-bench: three-etcd calls_per_s=%.0f p99_ms=%.2f\n", rate3, p993)

	var takeovers []time.Duration
	for r := range runs {
		l, _ := h.leader()
		killed := time.Now()
		h.servers[l].Kill()
		_, at := h.leader(l)
		d := at.Sub(killed)
		takeovers = append(takeovers, d)
		fmt.Printf("ha-bench: takeover run=%d ms=%d\n", r+1, d.Milliseconds())
		h.servers[l].Start()
	}
	slices.Sort(takeovers)
	fmt.Printf("ha-bench: takeover_median_ms=%d takeover_max_ms=%d lease_ttl_ms=%d runs=%d\n",
		takeovers[len(takeovers)/2].Milliseconds(), takeovers[len(takeovers)-1].Milliseconds(), ttl.Milliseconds(), runs)
}

// haKMSLoad runs callers concurrent encrypt loops against addrs for dur and
// returns calls per second and the p99 latency in milliseconds.
func haKMSLoad(t *testing.T, addrs string, callers int, dur time.Duration) (float64, float64) {
	t.Helper()
	c, err := client.Dial(addrs, client.WithAttemptTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "bench/k", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				s := time.Now()
				if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "bench/k", Plaintext: []byte("0123456789abcdef")}); err != nil {
					t.Errorf("encrypt: %v", err)
					return
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) == 0 {
		t.Fatal("no call completed")
	}
	return float64(len(lat)) / dur.Seconds(), float64(lat[len(lat)*99/100].Microseconds()) / 1000
}
