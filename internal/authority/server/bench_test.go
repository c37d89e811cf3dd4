package server

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

func benchAuthority(b *testing.B) *client.Client {
	_, c := benchServer(b)
	return c
}

func benchServer(b *testing.B) (*Server, *client.Client) {
	b.Helper()
	cfg := baseConfig(filepath.Join(b.TempDir(), "a"))
	srv, c := startB(b, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "bench", Classification: "confidential"}); err != nil {
		b.Fatal(err)
	}
	return srv, c
}

// BenchmarkAPIDataKeyBatch measures data keys per second through the
// local admin API with batches of 1000 (one audit event per batch).
func BenchmarkAPIDataKeyBatch(b *testing.B) {
	c := benchAuthority(b)
	ctx := context.Background()
	const n = 1000
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := c.KMS.BatchGenerateDataKey(ctx, &wardv1.BatchGenerateDataKeyRequest{Key: "bench", Count: n, WrappedOnly: true})
			if err != nil || len(r.Keys) != n {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkAPIEncryptUnary measures single encrypt calls through the API
// (one audit event each, group-committed).
func BenchmarkAPIEncryptUnary(b *testing.B) {
	c := benchAuthority(b)
	ctx := context.Background()
	pt := make([]byte, 32)
	b.ResetTimer()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "bench", Plaintext: pt}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkAuditAppendBbolt measures audit appends on the real path: the
// barrier (AES-GCM per record) over bbolt with an fsync per group commit,
// from 256 concurrent callers.
func BenchmarkAuditAppendBbolt(b *testing.B) {
	cfg := baseConfig(filepath.Join(b.TempDir(), "a"))
	srv, c := startB(b, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		b.Fatal(err)
	}
	st, err := srv.state()
	if err != nil {
		b.Fatal(err)
	}
	ev := srv.event(reqctx.Caller{Actor: "bench", RequestID: "r"}, "kms.encrypt", "ok", "")
	b.SetParallelism(128)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := st.audit.Append(ctx, ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAPIEncryptUnaryCallers measures single encrypt calls through the
// real admin socket (gRPC over the unix socket, one audit event each, group
// committed to bbolt with fsync) from 1, 8 and 64 concurrent callers, and
// reports throughput, the p50/p99 latency of one call and how many events
// shared a commit.
func BenchmarkAPIEncryptUnaryCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	benchCallers(b, func(c *client.Client, _ *unsealedState) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.KMS.Encrypt(ctx, req)
			return err
		}
	})
}

// BenchmarkKMSEncryptAuditedCallers is the same without the API: the
// authority's own KMS called in process, audited through the same log on
// the same bbolt file. Its ratio to BenchmarkAPIEncryptUnaryCallers is the
// cost of the API (gRPC, socket, interceptors); its ratio to the KMS with an
// in-memory recorder (kms.BenchmarkEncryptDecryptRewrap) is the cost of the
// durable audit.
func BenchmarkKMSEncryptAuditedCallers(b *testing.B) {
	pt := make([]byte, 32)
	benchCallers(b, func(_ *client.Client, st *unsealedState) func(context.Context) error {
		ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "bench", RequestID: "r"})
		return func(context.Context) error {
			_, _, err := st.kms.Encrypt(ctx, "bench", pt, nil)
			return err
		}
	})
}

// benchCallers runs b.N calls of the function mk returns from 1, 8 and 64
// concurrent callers against a fresh authority each.
func benchCallers(b *testing.B, mk func(*client.Client, *unsealedState) func(context.Context) error) {
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			srv, c := benchServer(b)
			st, err := srv.state()
			if err != nil {
				b.Fatal(err)
			}
			call := mk(c, st)
			ctx := context.Background()
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			commits := st.audit.Commits()
			b.ResetTimer()
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
			b.StopTimer()
			b.ReportMetric(float64(b.N)/float64(max(st.audit.Commits()-commits, 1)), "events/commit")
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
