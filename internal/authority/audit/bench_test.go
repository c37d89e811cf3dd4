package audit

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// BenchmarkAppendParallel measures group-committed appends from many
// concurrent callers on the in-memory store (bbolt-sized and etcd-sized
// batches).
func BenchmarkAppendParallel(b *testing.B) {
	for _, maxBatch := range []int{10000, 128} {
		b.Run(fmt.Sprintf("maxbatch=%d", maxBatch), func(b *testing.B) {
			st := memstore.New(memstore.WithMaxBatch(maxBatch))
			key := newKey(b)
			signer := &countingSigner{Signer: key}
			l := openLog(b, st, signer)
			e := testEvent(1)
			b.SetParallelism(128)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Append(context.Background(), e); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/float64(max(signer.n.Load(), 1)), "events/checkpoint")
		})
	}
}

// verifyInput returns the body template and the signed head for n
// synthetic events whose leaves are joinLeaf(seq, body).
func verifyInput(b *testing.B, n uint64) ([]byte, checkpoint.Checkpoint, checkpoint.Checkpoint) {
	e := testEvent(1)
	e.Time = time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	body, err := encodeBody(&e)
	if err != nil {
		b.Fatal(err)
	}
	key := benchKey()
	rng := factory.NewEmptyRange(0)
	earlier, err := checkpoint.Sign(key, testOrigin, 0, th.EmptyRoot(), e.Time)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		rng.Append(th.HashLeaf(joinLeaf(i, body)), nil)
		if i+1 == n/2 {
			root, _ := rng.GetRootHash(nil)
			earlier, _ = checkpoint.Sign(key, testOrigin, n/2, root, e.Time)
		}
	}
	root, _ := rng.GetRootHash(nil)
	if n == 0 {
		root = th.EmptyRoot()
	}
	head, err := checkpoint.Sign(key, testOrigin, n, root, e.Time)
	if err != nil {
		b.Fatal(err)
	}
	return body, head, earlier
}

var benchKey = sync.OnceValue(fuzzKey)

func runVerify(b *testing.B, n uint64, body []byte, head, earlier checkpoint.Checkpoint) {
	v := NewVerifier(VerifyOptions{Head: head, PublicKey: benchKey().Public(), Earlier: &earlier})
	for i := range n {
		v.Add(Record{Seq: i, Leaf: joinLeaf(i, body)})
	}
	rep := v.Finish()
	if !rep.OK() || !rep.Consistent {
		b.Fatalf("verification failed: %v", rep.Problems)
	}
}

// BenchmarkVerify verifies b.N streamed events (with a consistency proof
// against a checkpoint at half the size) and reports events/s.
func BenchmarkVerify(b *testing.B) {
	n := uint64(b.N)
	body, head, earlier := verifyInput(b, n)
	b.ResetTimer()
	runVerify(b, n, body, head, earlier)
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkVerify1M verifies a log of one million events per iteration.
func BenchmarkVerify1M(b *testing.B) {
	const n = 1_000_000
	body, head, earlier := verifyInput(b, n)
	b.ResetTimer()
	for range b.N {
		runVerify(b, n, body, head, earlier)
	}
	b.StopTimer()
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppendClosedLoop measures group commit as unary API callers
// drive it: each of 1, 8 or 64 callers appends, waits until its event is
// durable, spends 100µs on its round trip (the reply, the next request)
// and appends again. Every store write takes 500µs (a simulated fsync), so
// the figures do not depend on the disk of the machine: they show how
// well concurrent callers share commits (events/commit) and what that
// does to throughput and latency.
func BenchmarkAppendClosedLoop(b *testing.B) {
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			st := memstore.New()
			st.SetBatchHook(func([]store.Op) error { time.Sleep(500 * time.Microsecond); return nil })
			l := openLog(b, st, newKey(b))
			e := testEvent(1)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			commits := len(st.BatchSizes())
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						if _, err := l.Append(context.Background(), e); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
						for t := time.Now(); time.Since(t) < 100*time.Microsecond; {
							runtime.Gosched()
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/float64(max(len(st.BatchSizes())-commits, 1)), "events/commit")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
