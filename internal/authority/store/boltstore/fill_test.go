package boltstore

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/wardproject/ward/internal/authority/store"
)

// Only appends past the end of one prefix fill split pages to 90%.
func TestAppendsDetected(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	for _, k := range []string{"log/e/0005", "ids/b", "ids/x"} {
		if _, err := s.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	create := func(keys ...string) []store.Op {
		var ops []store.Op
		for _, k := range keys {
			ops = append(ops, store.Op{Key: k, Value: []byte("v")})
		}
		return ops
	}
	head := store.Op{Key: "log/head", Value: []byte("h"), ExpectRevision: 3}
	for _, tc := range []struct {
		name string
		ops  []store.Op
		want bool
	}{
		{"events and head", append(create("log/e/0006", "log/e/0007", "log/e/0008"), head), true},
		{"into an empty prefix", create("new/1", "new/2"), true},
		{"one event", append(create("log/e/0006"), head), false},
		{"descending", create("log/e/0008", "log/e/0007"), false},
		{"before a stored key", create("log/e/0001", "log/e/0002"), false},
		{"between stored ids", create("ids/c", "ids/d"), false},
		{"two prefixes", create("log/e/0006", "new/1"), false},
		{"mostly other ops", append(create("log/e/0006", "log/e/0007"), head, head), false},
		{"no prefix", create("a", "b"), false},
	} {
		var got bool
		if err := s.db.View(func(tx *bbolt.Tx) error {
			got = appends(tx.Bucket(bucketKV), tc.ops)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: appends = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// BenchmarkAppendBatchPages writes audit-log-like group commits (13 events
// of 600 bytes and a 3 KB head per batch) and reports the pages bbolt
// wrote per commit.
func BenchmarkAppendBatchPages(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	val, head := make([]byte, 600), make([]byte, 3000)
	var rev int64
	seq := 0
	before := s.db.Stats().TxStats
	b.ResetTimer()
	for range b.N {
		ops := make([]store.Op, 0, 14)
		for range 13 {
			ops = append(ops, store.Op{Key: fmt.Sprintf("audit/e/%020d", seq), Value: val})
			seq++
		}
		ops = append(ops, store.Op{Key: "audit/head", Value: head, ExpectRevision: rev})
		var err error
		if rev, err = s.Batch(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	after := s.db.Stats().TxStats
	d := after.Sub(&before)
	b.ReportMetric(float64(d.GetWrite())/float64(b.N), "pagewrites/commit")
}
