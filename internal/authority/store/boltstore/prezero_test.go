package boltstore

import (
	"fmt"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/wardproject/ward/internal/authority/store"
)

// hwmAndHole returns bbolt's high water mark and the first hole in the
// file at or past it (the file's size if none).
func hwmAndHole(t *testing.T, s *Store) (int64, int64) {
	t.Helper()
	var hwm int64
	if err := s.db.View(func(tx *bbolt.Tx) error { hwm = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	hole, err := unix.Seek(int(s.zeros.Fd()), hwm, unix.SEEK_HOLE)
	if err != nil {
		t.Skipf("SEEK_HOLE: %v", err)
	}
	return hwm, hole
}

// Appends past the end write into blocks already written (past bbolt's
// high water mark the file holds written blocks for at least another
// commit of the same growth), and the preallocation never touches
// stored data: every value reads back and bbolt's own consistency check is
// clean, before and after a reopen, while the file grows through many of
// bbolt's own growth steps.
func TestPrezeroKeepsWrittenBlocksAheadAndDataIntact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ward.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	val := make([]byte, 700)
	seq := 0
	check := func(s *Store) {
		t.Helper()
		for i := range seq {
			kv, err := s.Get(ctx, fmt.Sprintf("audit/e/%08d", i))
			if err != nil {
				t.Fatal(err)
			}
			if len(kv.Value) != len(val) || kv.Value[0] != byte(i) {
				t.Fatalf("event %d reads back %d bytes starting %d", i, len(kv.Value), kv.Value[0])
			}
		}
		if err := s.db.View(func(tx *bbolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		}); err != nil {
			t.Fatalf("bbolt check: %v", err)
		}
	}
	for round := range 2 {
		prev, _ := hwmAndHole(t, s)
		for i := range 150 {
			ops := make([]store.Op, 0, 30)
			for range 30 {
				v := append([]byte(nil), val...)
				v[0] = byte(seq)
				ops = append(ops, store.Op{Key: fmt.Sprintf("audit/e/%08d", seq), Value: v})
				seq++
			}
			if _, err := s.Batch(ctx, ops); err != nil {
				t.Fatal(err)
			}
			// Past the first commit, the written blocks past the mark
			// hold at least another batch of the same growth.
			hwm, hole := hwmAndHole(t, s)
			if i > 0 && hole-hwm < hwm-prev {
				t.Fatalf("round %d after %d events: a hole %d bytes past the high water mark %d (this batch grew it by %d)", round, seq, hole-hwm, hwm, hwm-prev)
			}
			prev = hwm
		}
		check(s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = Open(path); err != nil {
			t.Fatal(err)
		}
		check(s)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
