package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

func TestZZProbe(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	val := make([]byte, 600)
	head := make([]byte, 3000)
	var ds []time.Duration
	seq := 0
	var rev int64
	for i := 0; i < 1000; i++ {
		ops := []store.Op{}
		for j := 0; j < 13; j++ {
			ops = append(ops, store.Op{Key: fmt.Sprintf("audit/e/%020d", seq), Value: val})
			seq++
		}
		ops = append(ops, store.Op{Key: "audit/head", Value: head, ExpectRevision: rev})
		t0 := time.Now()
		rev, err = s.Batch(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	t.Log("p50", ds[500], "p90", ds[900], "p99", ds[990])
}
