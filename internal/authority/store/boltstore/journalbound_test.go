package boltstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// TestJournalOverlayBounded (red team): a write flood while flushes are
// slow (here: stalled) cannot pile up writes in memory without bound:
// past the overlay's bound a write waits for a flush, and then goes on.
func TestJournalOverlayBounded(t *testing.T) {
	s := openTemp(t, WithJournal())
	const limit, writes = 64, 300
	s.writeMu.Lock()
	s.jr.maxEntries = limit
	s.writeMu.Unlock()
	ctx := t.Context()

	s.jr.flushMu.Lock() // the flush stalls
	var acked atomic.Int64
	done := make(chan error, 1)
	go func() {
		for i := range writes {
			if _, err := s.Put(ctx, fmt.Sprintf("flood/%04d", i), []byte("x")); err != nil {
				done <- err
				return
			}
			acked.Add(1)
		}
		done <- nil
	}()
	// Let the flood run into the bound, and give it time to go past it
	// if it could (a broken bound shows here; a slow machine only makes
	// the check weaker, never wrong).
	for acked.Load() < limit {
		select {
		case err := <-done:
			t.Fatalf("the flood ended with the flush stalled: %v (%d acknowledged)", err, acked.Load())
		case <-time.After(time.Millisecond):
		}
	}
	time.Sleep(100 * time.Millisecond)
	s.ovMu.RLock()
	n := len(s.overlay)
	s.ovMu.RUnlock()
	if got := acked.Load(); got > limit || n > limit {
		t.Fatalf("with flushes stalled, %d writes were acknowledged and the overlay holds %d: the bound is %d", got, n, limit)
	}
	s.jr.flushMu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	kvs, err := s.List(ctx, "flood/")
	if err != nil || len(kvs) != writes {
		t.Fatalf("after the flood: %d keys, %v; want %d", len(kvs), err, writes)
	}
	s.ovMu.RLock()
	defer s.ovMu.RUnlock()
	var live int64
	seen := map[*ovFrame]bool{}
	for _, m := range [2]map[string]*ovEntry{s.overlay, s.flushing} { // a flush may be under way
		for _, e := range m {
			if !seen[e.fr] {
				seen[e.fr] = true
				live += e.fr.size
			}
		}
	}
	if s.ovBytes != live {
		t.Fatalf("the overlay counts %d bytes, its entries keep %d", s.ovBytes, live)
	}
}

// TestJournalOverlayBoundedWhenBboltFails (red team): with bbolt refusing
// every flush (disk full) and the journal still having room, writes past
// the overlay's bound are refused (not acknowledged, not kept in memory),
// and taken again once a flush succeeds.
func TestJournalOverlayBoundedWhenBboltFails(t *testing.T) {
	dir := smallFS(t, 3<<20)
	s, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	const limit = 6
	s.writeMu.Lock()
	s.jr.maxEntries = limit
	s.writeMu.Unlock()
	filler := fill(t, dir)
	val := bytes.Repeat([]byte{1}, 2000) // the journal's allocated blocks hold them all
	var refused error
	acked := 0
	for i := range 3 * limit {
		if _, err := s.Put(ctx, fmt.Sprintf("k/%02d", i), val); err != nil {
			refused = err
			break
		}
		acked++
		s.flush() // fails: bbolt has no room
	}
	if refused == nil || acked != limit || !strings.Contains(refused.Error(), "refuses them") {
		t.Fatalf("with bbolt refusing flushes: %d writes acknowledged, then %v; want %d, then a refusal", acked, refused, limit)
	}
	if _, err := s.Get(ctx, fmt.Sprintf("k/%02d", acked)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused write is visible: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.flush()
	if _, err := s.Put(ctx, "after", val); err != nil {
		t.Fatalf("a write after a successful flush: %v", err)
	}
	kvs, err := s.List(ctx, "k/")
	if err != nil || len(kvs) != acked {
		t.Fatalf("%d keys, %v; want the %d acknowledged", len(kvs), err, acked)
	}
}

// TestJournalBoundedWhenBboltFailsHotKey (red team): rewrites of one key
// keep the overlay at one entry, but each adds a frame to a journal file
// that is not switched while bbolt refuses the flushes: past the bound
// they are refused too, and taken again once a flush succeeds.
func TestJournalBoundedWhenBboltFailsHotKey(t *testing.T) {
	dir := smallFS(t, 3<<20)
	s, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	filler := fill(t, dir)
	// Values big enough that bbolt needs room it does not get: the
	// flushes fail (the journal's blocks were allocated before).
	behind := func() bool {
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		return s.jr.flushErr != nil
	}
	for i := 0; !behind(); i++ {
		if _, err := s.Put(ctx, fmt.Sprintf("big/%d", i), bytes.Repeat([]byte{2}, 20000)); err != nil {
			t.Fatalf("write %d refused before any flush failed: %v", i, err)
		}
		s.flush()
	}
	const limit = 64 << 10
	s.writeMu.Lock()
	s.jr.maxBehind = s.jr.off + limit
	s.writeMu.Unlock()
	var refused error
	acked := 0
	for i := range 100 { // 16 frames of 4 KiB reach the bound
		if _, err := s.Put(ctx, "hot", []byte(fmt.Sprint(i))); err != nil {
			refused = err
			break
		}
		acked++
		s.flush() // fails: bbolt has no room
	}
	if refused == nil || !strings.Contains(refused.Error(), "bbolt refuses") {
		t.Fatalf("with bbolt refusing flushes, %d rewrites of one key acknowledged, then %v; want a refusal past %d bytes of journal", acked, refused, limit)
	}
	if kv, err := s.Get(ctx, "hot"); err != nil || string(kv.Value) != fmt.Sprint(acked-1) {
		t.Fatalf("after the refusal: %q, %v; want the last acknowledged %d", kv.Value, err, acked-1)
	}
	must(t, os.Remove(filler))
	s.flush() // succeeds, bbolt has it all
	s.flush() // switches files
	if _, err := s.Put(ctx, "hot", []byte("again")); err != nil {
		t.Fatalf("a write after successful flushes: %v", err)
	}
}

// TestJournalOversizedWriteRefused (red team): a write whose frame would
// be longer than replay accepts (maxFramePayload: a longer length field
// reads as corruption) is refused before anything is written, instead of
// acknowledged and then dropped as a torn last record (or refusing the
// whole journal) after a crash. The bound is lowered here; the real one
// is replay's.
func TestJournalOversizedWriteRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.jr.maxFrame != maxFramePayload {
		t.Fatalf("the write bound %d is not replay's %d", s.jr.maxFrame, maxFramePayload)
	}
	s.writeMu.Lock()
	s.jr.maxFrame = 64 << 10
	s.writeMu.Unlock()
	ctx := t.Context()
	ops := []store.Op{{Key: "a", Value: bytes.Repeat([]byte{1}, 40<<10), ExpectRevision: -1}, {Key: "b", Value: bytes.Repeat([]byte{2}, 40<<10), ExpectRevision: -1}}
	if _, err := s.Batch(ctx, ops); err == nil || !strings.Contains(err.Error(), "larger than a journal record holds") {
		t.Fatalf("an oversized batch: %v", err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused batch is visible: %v", err)
	}
	rev, err := s.Batch(ctx, ops[:1])
	if err != nil || rev != 1 {
		t.Fatalf("a batch within the bound after the refusal: rev %d, %v; want 1", rev, err)
	}
}
