package boltstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/wardproject/ward/internal/authority/store"
)

// TestJournalFailedFlushMergesBack (red team): a flush that bbolt refuses
// (disk full) while writes go on into the fresh overlay puts its entries
// back under the overlay: the writes made during it stay newer (a put over
// a flushing put or delete, a delete over a flushing put), reads keep the
// write's revision, a CAS sees the newest one, and once there is room the
// next flush writes exactly the newest state: nothing lost, no delete
// undone, no byte of the overlay left counted, and a reopen reads the same.
func TestJournalFailedFlushMergesBack(t *testing.T) {
	dir := smallFS(t, 3<<20)
	path := filepath.Join(dir, "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // after tx's rollback below (cleanups run last first)
	ctx := t.Context()
	type want struct {
		val string
		rev int64 // 0: deleted
	}
	state := map[string]want{}
	put := func(k, v string) {
		t.Helper()
		rev, err := s.Put(ctx, k, []byte(v))
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		state[k] = want{v, rev}
	}
	del := func(k string) {
		t.Helper()
		if err := s.Delete(ctx, k); err != nil {
			t.Fatalf("delete %s: %v", k, err)
		}
		state[k] = want{}
	}
	check := func(when string, st *Store) {
		t.Helper()
		live := 0
		for k, w := range state {
			kv, err := st.Get(ctx, k)
			if w.rev == 0 {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("%s: deleted %s reads %q rev %d, %v", when, k, trunc(kv.Value), kv.Revision, err)
				}
				continue
			}
			live++
			if err != nil || string(kv.Value) != w.val || kv.Revision != w.rev {
				t.Fatalf("%s: %s = %q rev %d, %v; want %q rev %d", when, k, trunc(kv.Value), kv.Revision, err, trunc([]byte(w.val)), w.rev)
			}
		}
		kvs, err := st.List(ctx, "m/")
		if err != nil || len(kvs) != live {
			t.Fatalf("%s: List has %d keys, %v; want %d", when, len(kvs), err, live)
		}
		for _, kv := range kvs {
			if w := state[kv.Key]; w.rev != kv.Revision || w.val != string(kv.Value) {
				t.Fatalf("%s: List has %s = %q rev %d; want %q rev %d", when, kv.Key, trunc(kv.Value), kv.Revision, trunc([]byte(w.val)), w.rev)
			}
		}
	}
	flushFailed := func() bool {
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		return s.jr.flushErr != nil
	}

	for _, k := range []string{"m/a", "m/b", "m/c", "m/d", "m/e", "m/f"} {
		put(k, "v1")
	}
	s.flush() // in bbolt
	check("in bbolt", s)

	// The overlay the failing flush takes: too big for the room bbolt
	// will have (the journal holds it: it is written before the disk fills).
	s.jr.flushMu.Lock() // no flush until the disk is full
	held := true
	defer func() { // before Close, if a check below failed
		if held {
			s.jr.flushMu.Unlock()
		}
	}()
	big := string(bytes.Repeat([]byte{0x5a}, 200<<10))
	for i := range 4 {
		put(fmt.Sprintf("m/big%d", i), big)
	}
	put("m/a", "v2")
	del("m/b")
	put("m/c", "v2")
	put("m/g", "v2") // not in bbolt
	del("m/e")
	put("m/i", "v2")
	filler := fill(t, dir)

	tx, err := s.db.Begin(true) // holds the flush in the middle
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	held = false
	s.jr.flushMu.Unlock()
	flushed := make(chan struct{})
	go func() { s.flush(); close(flushed) }()
	for i := 0; ; i++ { // until a flush (this one or the flusher's) handed the overlay over
		s.ovMu.RLock()
		n := len(s.flushing)
		s.ovMu.RUnlock()
		if n > 0 {
			break
		}
		if i > 10000 {
			t.Fatal("no flush handed the overlay over")
		}
		time.Sleep(time.Millisecond)
	}
	// Writes during the flush, of the same keys.
	put("m/a", "v3")    // over a flushing put
	put("m/b", "v3")    // over a flushing delete
	del("m/c")          // over a flushing put (v1 in bbolt)
	del("m/g")          // over a flushing put (not in bbolt)
	put("m/h", "v3")    // new
	put("m/big0", "v3") // over a big flushing put
	iRev := state["m/i"].rev
	if _, err := s.CompareAndSwap(ctx, "m/i", []byte("stale"), iRev-1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CAS of m/i at an older revision during the flush: %v; want a conflict", err)
	}
	rev, err := s.CompareAndSwap(ctx, "m/i", []byte("v3"), iRev) // its newest version is flushing
	if err != nil {
		t.Fatalf("CAS of m/i at its flushing revision %d: %v", iRev, err)
	}
	state["m/i"] = want{"v3", rev}
	check("during the flush", s)

	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	<-flushed
	for i := 0; !flushFailed(); i++ {
		if i > 10000 {
			t.Fatal("with the disk full no flush failed: the test does not test the merge")
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; ; i++ { // the flusher's own flush may still be merging back
		s.ovMu.RLock()
		n := len(s.flushing)
		s.ovMu.RUnlock()
		if n == 0 {
			break
		}
		if i > 10000 {
			t.Fatal("a failed flush kept its entries flushing")
		}
		time.Sleep(time.Millisecond)
	}
	check("after the failed flush", s)

	// More writes after the merge, and another failed flush.
	put("m/e", "v4") // deleted in the merged-back entries
	del("m/big1")
	s.flush()
	if !flushFailed() {
		t.Fatal("a flush succeeded with the disk full")
	}
	check("after a second failed flush", s)

	// A crash now replays the same.
	crashed := copyDir(t, dir)
	os.Remove(filepath.Join(crashed, "filler"))
	r, err := Open(filepath.Join(crashed, "ward.db"))
	if err != nil {
		t.Fatalf("opening a copy of the full store: %v", err)
	}
	check("crash after the failed flushes", r)
	r.Close()

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.flush()
	if flushFailed() {
		t.Fatal("the flush failed with room again")
	}
	s.ovMu.RLock()
	n, f, size := len(s.overlay), len(s.flushing), s.ovBytes
	s.ovMu.RUnlock()
	if n != 0 || f != 0 || size != 0 {
		// A write of the flusher's may have come after; none here.
		t.Fatalf("after a successful flush: %d entries, %d flushing, %d bytes kept", n, f, size)
	}
	check("in bbolt after room again", s)
	if err := s.db.View(func(tx *bbolt.Tx) error { // bbolt itself holds exactly the state
		b := tx.Bucket(bucketKV)
		for k, w := range state {
			val, rev, ok, err := bboltGet(b, k)
			if err != nil || ok != (w.rev != 0) || (ok && (string(val) != w.val || rev != w.rev)) {
				return fmt.Errorf("bbolt has %s = %q rev %d (%v, %v); want %q rev %d", k, trunc(val), rev, ok, err, trunc([]byte(w.val)), w.rev)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	check("reopened", s)
}

func trunc(b []byte) string {
	if len(b) > 8 {
		return fmt.Sprintf("%s...(%d bytes)", b[:8], len(b))
	}
	return string(b)
}

// TestJournalRefusesKeysBboltRefuses (red team): a key longer than bbolt
// takes was acknowledged by the journal and then refused by every flush
// ("key too large"): one such write stopped the store's writes for good
// (replayed on every open). Put, CompareAndSwap and Batch refuse it now,
// with and without the journal; a key of the longest size bbolt takes
// is written and flushed.
func TestJournalRefusesKeysBboltRefuses(t *testing.T) {
	ctx := t.Context()
	long := strings.Repeat("k", bbolt.MaxKeySize+1)
	for _, opts := range [][]Option{{WithJournal()}, nil} {
		s := openTemp(t, opts...)
		if _, err := s.Put(ctx, long, []byte("v")); err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("put of a %d-byte key: %v; want a refusal", len(long), err)
		}
		if _, err := s.CompareAndSwap(ctx, long, []byte("v"), 0); err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("compare-and-swap of a %d-byte key: %v; want a refusal", len(long), err)
		}
		if _, err := s.Batch(ctx, []store.Op{{Key: "ok", Value: []byte("v"), ExpectRevision: -1}, {Key: long, Value: []byte("v"), ExpectRevision: -1}}); err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("batch with a %d-byte key: %v; want a refusal", len(long), err)
		}
		if _, err := s.Get(ctx, "ok"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the refused batch is visible: %v", err)
		}
		longest := long[:bbolt.MaxKeySize]
		rev, err := s.Put(ctx, longest, []byte("v"))
		if err != nil {
			t.Fatalf("put of a %d-byte key: %v", len(longest), err)
		}
		if s.jr != nil {
			s.flush()
			s.writeMu.Lock()
			ferr := s.jr.flushErr
			s.writeMu.Unlock()
			if ferr != nil {
				t.Fatalf("the flush after the refused writes failed: %v", ferr)
			}
		}
		if kv, err := s.Get(ctx, longest); err != nil || kv.Revision != rev {
			t.Fatalf("the %d-byte key: rev %d, %v; want %d", len(longest), kv.Revision, err, rev)
		}
	}
}

// TestJournalCloseDuringFlush (red team): a watcher sees every write made
// during a flush's hand-off, in order, with the write's revision; Close
// called while the flush is in the middle (its bbolt transaction held)
// waits for it, flushes the newer writes too, removes the journal, and a
// reopen reads every write (a delete during the flush stays deleted).
func TestJournalCloseDuringFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	s.jr.flushMu.Lock() // no flush takes the writes before the transaction below holds bbolt
	for _, k := range []string{"c/a", "c/b", "c/c"} {
		if _, err := s.Put(ctx, k, []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	events, err := s.Watch(ctx, "c/")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			_ = tx.Rollback()
		}
	})
	s.jr.flushMu.Unlock()
	select { // the flusher's flush, stopped in bbolt
	case s.jr.kick <- struct{}{}:
	default:
	}
	for i := 0; ; i++ {
		s.ovMu.RLock()
		n := len(s.flushing)
		s.ovMu.RUnlock()
		if n == 3 {
			break
		}
		if i > 10000 {
			t.Fatal("the flusher did not hand the overlay over")
		}
		time.Sleep(time.Millisecond)
	}
	type ev struct {
		typ store.EventType
		key string
		rev int64
	}
	var wantEvs []ev
	rev, err := s.Put(ctx, "c/a", []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	wantEvs = append(wantEvs, ev{store.EventPut, "c/a", rev})
	if err := s.Delete(ctx, "c/b"); err != nil {
		t.Fatal(err)
	}
	wantEvs = append(wantEvs, ev{store.EventDelete, "c/b", rev + 1})
	if rev, err = s.CompareAndSwap(ctx, "c/a", []byte("newer"), rev); err != nil {
		t.Fatal(err)
	}
	wantEvs = append(wantEvs, ev{store.EventPut, "c/a", rev})
	for i, w := range wantEvs {
		got := <-events
		if got.Type != w.typ || got.Key != w.key || got.Revision != w.rev {
			t.Fatalf("event %d during the flush: %v %s rev %d; want %v %s rev %d", i, got.Type, got.Key, got.Revision, w.typ, w.key, w.rev)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned with the flush in the middle: %v", err)
	case <-time.After(50 * time.Millisecond): // only makes the check weaker on a slow machine
	}
	released = true
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, ok := <-events; ok {
		t.Fatal("the watch channel is open after Close")
	}
	for i := range 2 {
		if _, err := os.Stat(fmt.Sprintf("%s.journal%d", path, i)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("journal %d left after a clean Close: %v", i, err)
		}
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	kvs, err := r.List(ctx, "c/")
	if err != nil || len(kvs) != 2 || kvs[0].Key != "c/a" || string(kvs[0].Value) != "newer" || kvs[0].Revision != rev || kvs[1].Key != "c/c" || string(kvs[1].Value) != "old" {
		t.Fatalf("reopened: %v, %v; want c/a = newer (rev %d), c/c = old", kvs, err, rev)
	}
}
