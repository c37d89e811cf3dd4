package server

import (
	"context"
	"path/filepath"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

func benchAuthority(b *testing.B) *client.Client {
	b.Helper()
	cfg := baseConfig(filepath.Join(b.TempDir(), "a"))
	_, c := startB(b, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "bench", Classification: "confidential"}); err != nil {
		b.Fatal(err)
	}
	return c
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
