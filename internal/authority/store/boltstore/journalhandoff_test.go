package boltstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// A flush hands the overlay over to bbolt without copying it: the old one
// becomes flushing and writes go to a fresh one. While the flush's bbolt
// transaction waits (a test transaction holds bbolt's write lock), reads
// see the new writes over the flushing ones (overwritten, deleted, kept),
// List merges both, and after the flush every write is in bbolt.
func TestJournalFlushHandOffKeepsEveryWriteVisible(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, WithJournal())
	// No flush (the flusher's ticks) takes the writes before tx holds bbolt.
	s.jr.flushMu.Lock()
	for _, k := range []string{"h/a", "h/b", "h/c"} {
		if _, err := s.Put(ctx, k, []byte("old")); err != nil {
			s.jr.flushMu.Unlock()
			t.Fatal(err)
		}
	}
	tx, err := s.db.Begin(true) // holds the flush's bbolt transaction
	s.jr.flushMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() }) // before Close: a failure here must not hang it
	flushed := make(chan struct{})
	go func() { s.flush(); close(flushed) }()
	for i := 0; ; i++ { // until the flush handed the overlay over
		s.ovMu.RLock()
		n := len(s.flushing)
		s.ovMu.RUnlock()
		if n == 3 {
			break
		}
		if i > 10000 {
			t.Fatal("the flush did not hand the overlay over")
		}
		time.Sleep(time.Millisecond)
	}
	newRev, err := s.Put(ctx, "h/a", []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "h/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "h/d", []byte("added")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"h/a": "new", "h/c": "old", "h/d": "added"}
	check := func(when string) {
		t.Helper()
		for k, v := range want {
			kv, err := s.Get(ctx, k)
			if err != nil || string(kv.Value) != v {
				t.Fatalf("%s: %s = %q, %v; want %q", when, k, kv.Value, err, v)
			}
		}
		if _, err := s.Get(ctx, "h/b"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s: deleted h/b read back (%v)", when, err)
		}
		kvs, err := s.List(ctx, "h/")
		if err != nil || len(kvs) != len(want) {
			t.Fatalf("%s: List %v, %v; want %v", when, kvs, err, want)
		}
		for _, kv := range kvs {
			if want[kv.Key] != string(kv.Value) {
				t.Fatalf("%s: List has %s = %q", when, kv.Key, kv.Value)
			}
		}
		// A compare-and-swap sees the newest revision, not the flushing one.
		if _, err := s.CompareAndSwap(ctx, "h/a", []byte("new"), newRev); err != nil {
			t.Fatalf("%s: CAS at the newest revision: %v", when, err)
		}
		kv, _ := s.Get(ctx, "h/a")
		newRev = kv.Revision
	}
	check("during the flush")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	<-flushed
	check("after the flush")
	s.flush()
	s.ovMu.RLock()
	n, f, size := len(s.overlay), len(s.flushing), s.ovBytes
	s.ovMu.RUnlock()
	if n != 0 || f != 0 || size != 0 {
		t.Fatalf("after a second flush: %d entries, %d flushing, %d bytes kept", n, f, size)
	}
	check("in bbolt")
}
