package backup

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/authority/store/etcdstore"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// benchKeys is how many stored values the backup benchmarks hold
// (WARD_BENCH_BACKUP_KEYS, default 100,000).
func benchKeys() int {
	if n, err := strconv.Atoi(os.Getenv("WARD_BENCH_BACKUP_KEYS")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// benchAuthority is an unsealed authority on bbolt holding n values of
// about the size of a KMS key record (300 bytes).
func benchAuthority(b *testing.B, n int) *authority {
	b.Helper()
	raw, err := boltstore.Open(filepath.Join(b.TempDir(), "ward.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.Close() })
	a := newAuthority(b, raw, 0)
	ctx := context.Background()
	v := a.b.Store()
	val := bytes.Repeat([]byte("r"), 300)
	var ops []store.Op
	for i := range n {
		ops = append(ops, store.Op{Key: fmt.Sprintf("kms/keys/%040x", i), Value: val, ExpectRevision: -1})
		if len(ops) == 5000 || i == n-1 {
			if _, err := v.Batch(ctx, ops); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	return a
}

// BenchmarkBackup times the parts of a backup and a restore of
// benchKeys() values: Create (snapshot, audit leaves, sign), Verify (no
// secret), Restore into a fresh bbolt file and into etcd.
func BenchmarkBackup(b *testing.B) {
	n := benchKeys()
	a := benchAuthority(b, n)
	data, _ := a.backup(b)
	perOp := func(b *testing.B) {
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
		b.ReportMetric(float64(len(data)), "file-bytes")
	}
	b.Run(fmt.Sprintf("create/keys=%d", n), func(b *testing.B) {
		for b.Loop() {
			a.backup(b)
		}
		perOp(b)
	})
	b.Run(fmt.Sprintf("verify/keys=%d", n), func(b *testing.B) {
		for b.Loop() {
			if _, err := Verify(bytes.NewReader(data), VerifyOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		perOp(b)
	})
	b.Run(fmt.Sprintf("restore-bbolt/keys=%d", n), func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			dst, err := boltstore.Open(filepath.Join(b.TempDir(), "ward.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := Restore(context.Background(), bytes.NewReader(data), dst, RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			dst.Close()
			b.StartTimer()
		}
		perOp(b)
	})
	b.Run(fmt.Sprintf("restore-memory/keys=%d", n), func(b *testing.B) {
		for b.Loop() {
			if _, err := Restore(context.Background(), bytes.NewReader(data), memstore.New(), RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		perOp(b)
	})
	if os.Getenv("WARD_BENCH_ETCD") == "" {
		return
	}
	e := etcdtest.Start(b)
	b.Run(fmt.Sprintf("restore-etcd/keys=%d", n), func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			b.StopTimer()
			dst, err := etcdstore.Open(context.Background(), etcdstore.Config{Endpoints: e.Endpoints(), Prefix: fmt.Sprintf("/bench-%d/", i)})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := Restore(context.Background(), bytes.NewReader(data), dst, RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			dst.Close()
			b.StartTimer()
		}
		perOp(b)
	})
}
