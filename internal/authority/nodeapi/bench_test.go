package nodeapi

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// noopKMS answers Encrypt at once with a canned reply: the mTLS stack, the
// Node API's authentication and limits alone.
type noopKMS struct {
	wardv1.UnimplementedKMSServer
	resp *wardv1.EncryptResponse
}

func (n *noopKMS) Encrypt(context.Context, *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	return n.resp, nil
}

// BenchmarkWorkloadKMSCallers measures the workload KMS as workloads reach
// it: gRPC over mTLS on loopback (TLS 1.3, the workload's X509-SVID), the
// Node API's authentication, the policy decision on the caller's SPIFFE ID
// and the KMS encrypt, from 8 and 64 concurrent callers on one connection
// (as one workload's client). The KMS audits to a recorder that keeps
// nothing: this is the stack and the policy check without the durable
// audit (server.BenchmarkNodeKMSEncryptCallers has it). "noop" is the same
// request and reply through the same server, listener, TLS and
// interceptors with a KMS that does nothing: the ceiling of the stack.
func BenchmarkWorkloadKMSCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	for _, kind := range []string{"encrypt", "noop"} {
		for _, callers := range []int{8, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d", kind, callers), func(b *testing.B) {
				k := newKMSHarness(b)
				ctx := context.Background()
				if _, err := k.kms.Create(ctx, "bench", "confidential", ""); err != nil {
					b.Fatal(err)
				}
				k.apply(b, `@id("bench") permit(principal == Workload::"spiffe://`+testTD.Name()+`/bench", action == Action::"kms:encrypt", resource == Key::"bench");`)
				svid := k.caSigned(b, "/bench")
				c := k.workloadKMS(b, svid)
				var ct *wardv1.EncryptResponse
				var err error
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if ct, err = c.Encrypt(ctx, req); err == nil || time.Now().After(deadline) {
						break
					}
				}
				if err != nil {
					b.Fatal(err)
				}
				if kind == "noop" {
					h := newHarnessMounting(b, nil, &noopKMS{resp: ct}, nil)
					c = wardv1.NewKMSClient(h.conn(b, h.caSigned(b, "/bench")))
				}
				runCallers(b, callers, func(ctx context.Context) error {
					r, err := c.Encrypt(ctx, req)
					if err == nil && len(r.Ciphertext) == 0 {
						err = fmt.Errorf("empty reply")
					}
					return err
				})
			})
		}
	}
}

// runCallers runs b.N calls of call from callers goroutines and reports
// throughput, p50/p99 latency and cpu-µs/op: the process's CPU time (user
// + system: client, server and GC, all in this process) ÷ calls, steadier
// than a rate on a shared machine.
func runCallers(b *testing.B, callers int, call func(context.Context) error) {
	ctx := context.Background()
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	for range callers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := call(ctx); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// processCPU is the CPU time (user + system) this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
