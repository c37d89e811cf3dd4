package audit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
