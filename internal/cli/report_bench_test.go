package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/report"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkReportEndToEnd is `ward report` against a real authority holding
// WARD_BENCH_REPORT_KEYS keys (default 10,000) and WARD_BENCH_REPORT_ENTRIES
// entries (default 100,000): reading everything through the admin socket,
// verifying the whole audit log, building and rendering the report (HTML
// and JSON). Setup is not timed. bench/report/run.sh runs it.
func BenchmarkReportEndToEnd(b *testing.B) {
	nKeys, nEntries := envInt("WARD_BENCH_REPORT_KEYS", 10000), envInt("WARD_BENCH_REPORT_ENTRIES", 100000)
	dir := b.TempDir()
	cfg := &config.Server{TrustDomain: "bench.example.org", DataDir: dir, LogLevel: "warn",
		Seal: config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "seal.key")},
		KMS:  config.KMS{RotationCheckInterval: yamlconf.Duration(time.Hour)}}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	ctx := context.Background()
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	sl, _ := server.OpenSeal(cfg)
	srv, err := server.New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Stop(); raw.Close() })
	if err := srv.DevInit(ctx); err != nil {
		b.Fatal(err)
	}
	c, err := client.Dial(srv.AdminAddress())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < nKeys; i += 32 {
				cls := []string{"confidential", "restricted", "internal"}[i%3]
				if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: fmt.Sprintf("tenant-%d/key-%d", i%100, i), Classification: cls}); err != nil {
					errc <- err
					return
				}
				if i%10 == 0 {
					if _, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: fmt.Sprintf("tenant-%d/key-%d", i%100, i)}); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	lr, err := c.Entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	batch := int(lr.MaxBatchEntries)
	for i := 0; i < nEntries; i += batch {
		req := &wardv1.BatchEntriesRequest{}
		for j := i; j < min(i+batch, nEntries); j++ {
			req.Create = append(req.Create, &wardv1.Entry{SpiffeId: fmt.Sprintf("spiffe://bench.example.org/ns/%d/sa/%d", j%300, j),
				ParentId: fmt.Sprintf("spiffe://bench.example.org/ward/agent/node-%d", j%50), TtlSeconds: int64(60 * (1 + j%120)),
				Selectors: []*wardv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", j)}}})
		}
		if _, err := c.Entries.BatchEntries(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("setup: %d keys (every 10th rotated), %d entries in %v", nKeys, nEntries, time.Since(start).Round(time.Second))
	b.ResetTimer()
	for b.Loop() {
		in, err := reportInput(ctx, c, true, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		if !in.Audit.Verified || len(in.Keys) != nKeys || len(in.Entries) != nEntries {
			b.Fatalf("verified %v, %d keys, %d entries", in.Audit.Verified, len(in.Keys), len(in.Entries))
		}
		r := report.Build(in)
		var buf bytes.Buffer
		if err := report.WriteHTML(&buf, r); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(in.Audit.Size), "audit-events")
		b.ReportMetric(float64(buf.Len()), "html-bytes")
	}
}
