// Package benchcpu measures benchmarks by the CPU time of the process
// (user + system, every thread: client, server, GC). On a shared, loaded
// machine CPU time per operation is steadier than a rate or a wall time,
// which count waiting for a core.
package benchcpu

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Process is the CPU time (user + system) this process has used so far.
func Process(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ReportPerOp reports the process's CPU time since t0 (a Process reading)
// divided by b.N, as cpu-µs/op.
func ReportPerOp(b *testing.B, t0 time.Duration) {
	b.ReportMetric(float64((Process(b)-t0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// Callers runs b.N calls of call from callers goroutines and reports
// cpu-µs/op, ops/s and the p50/p99 latency (p50-µs, p99-µs). The first
// failed call fails the benchmark and stops its goroutine.
func Callers(b *testing.B, callers int, call func(context.Context) error) {
	ctx := context.Background()
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := Process(b)
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
	ReportPerOp(b, cpu0)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
