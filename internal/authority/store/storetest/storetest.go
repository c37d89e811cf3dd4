// Package storetest is the conformance suite for store.Store backends. Every
// backend's tests call Run (and RunMultiWriter where several instances can
// share one backend, as with etcd) so that all backends keep the same
// contract: same errors, same revision rules, same atomicity, same watch
// semantics. Bench gives every backend the same benchmarks.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// waitTimeout bounds how long the suite waits for a watch event or a channel
// close before failing. It is a hang guard, not a timing assertion.
const waitTimeout = 20 * time.Second

// Run runs the conformance suite. newStore must return a fresh, empty store
// for each subtest and arrange (with t.Cleanup) to close it; the suite may
// close the store itself, so that cleanup must tolerate store.ErrClosed.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Identity", testIdentity},
		{"GetNotFound", testGetNotFound},
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"EmptyKeyRejected", testEmptyKey},
		{"Delete", testDelete},
		{"RevisionsStrictlyIncrease", testRevisions},
		{"ListPrefixOrderingIsolation", testList},
		{"ListMany", testListMany},
		{"CompareAndSwap", testCAS},
		{"Batch", testBatch},
		{"BatchConditionFailsAppliesNothing", testBatchConflict},
		{"BatchInvalidAppliesNothing", testBatchInvalid},
		{"MaxBatch", testMaxBatch},
		{"Watch", testWatch},
		{"WatchPrefixes", testWatchPrefixes},
		{"WatchCancelledContext", testWatchCancelled},
		{"ConcurrentCASLosesNoUpdate", testConcurrentCAS},
		{"BinaryKeysAndValues", testBinary},
		{"NoAliasing", testNoAliasing},
		{"CancelledContext", testCancelledContext},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func testIdentity(t *testing.T, s store.Store) {
	if s.Backend() == "" {
		t.Error("Backend() is empty")
	}
	if s.MaxBatch() < 1 {
		t.Errorf("MaxBatch() = %d, want >= 1", s.MaxBatch())
	}
}

func testGetNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, "nf/ab", []byte("x"))
	for _, key := range []string{"missing", "nf/a", "nf/abc", "nf/"} {
		_, err := s.Get(ctx, key)
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(%q) error = %v, want ErrNotFound", key, err)
		}
	}
}

func testPutGet(t *testing.T, s store.Store) {
	big := make([]byte, 256<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	tests := []struct {
		name  string
		key   string
		value []byte
	}{
		{"nil", "pg/nil", nil},
		{"empty", "pg/empty", []byte{}},
		{"short", "pg/short", []byte("x")},
		{"text", "pg/text", []byte("hello, ward")},
		{"nul", "pg/nul", []byte{0, 0, 0}},
		{"256KiB", "pg/big", big},
		{"key with spaces and unicode", "pg/ключ with spaces ✓", []byte("v")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rev := mustPut(t, s, tc.key, tc.value)
			if rev <= 0 {
				t.Fatalf("Put(%q) revision = %d, want > 0", tc.key, rev)
			}
			kv := mustGet(t, s, tc.key)
			if kv.Key != tc.key || !bytes.Equal(kv.Value, tc.value) || kv.Revision != rev {
				t.Errorf("Get(%q) = {%q, %d bytes, rev %d}, want {%q, %d bytes, rev %d}",
					tc.key, kv.Key, len(kv.Value), kv.Revision, tc.key, len(tc.value), rev)
			}
		})
	}
}

func testOverwrite(t *testing.T, s store.Store) {
	r1 := mustPut(t, s, "ow", []byte("one"))
	r2 := mustPut(t, s, "ow", []byte("two"))
	if r2 <= r1 {
		t.Fatalf("second Put revision %d, want > %d", r2, r1)
	}
	checkKV(t, s, "ow", "two", r2)
}

func testEmptyKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.Put(ctx, "", []byte("v")); err == nil {
		t.Error(`Put("") succeeded, want error`)
	}
	if _, err := s.Get(ctx, ""); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Errorf(`Get("") error = %v, want an invalid-key error`, err)
	}
	if err := s.Delete(ctx, ""); err == nil {
		t.Error(`Delete("") succeeded, want error`)
	}
	if _, err := s.CompareAndSwap(ctx, "", []byte("v"), 0); err == nil || errors.Is(err, store.ErrConflict) {
		t.Errorf(`CompareAndSwap("") error = %v, want an invalid-key error`, err)
	}
	if _, err := s.Batch(ctx, []store.Op{{Key: "ek/ok", Value: []byte("v"), ExpectRevision: -1}, {Key: "", ExpectRevision: -1}}); err == nil {
		t.Error(`Batch with key "" succeeded, want error`)
	}
	expectList(t, s, "", nil)
}

func testDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	r1 := mustPut(t, s, "del/a", []byte("a"))
	mustPut(t, s, "del/b", []byte("b"))
	if err := s.Delete(ctx, "del/a"); err != nil {
		t.Fatalf("Delete(del/a): %v", err)
	}
	expectNotFound(t, s, "del/a")
	if err := s.Delete(ctx, "del/a"); err != nil {
		t.Errorf("Delete of an already deleted key: %v, want nil", err)
	}
	if err := s.Delete(ctx, "del/never"); err != nil {
		t.Errorf("Delete of a never written key: %v, want nil", err)
	}
	kvs := mustList(t, s, "del/")
	if len(kvs) != 1 || kvs[0].Key != "del/b" {
		t.Errorf("List(del/) after delete = %v, want only del/b", keysOf(kvs))
	}
	r2 := mustPut(t, s, "del/a", []byte("again"))
	if r2 <= r1 {
		t.Errorf("re-Put after delete revision %d, want > %d", r2, r1)
	}
	checkKV(t, s, "del/a", "again", r2)
}

func testRevisions(t *testing.T, s store.Store) {
	ctx := t.Context()
	var last int64
	step := func(what string, rev int64, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if rev <= last {
			t.Fatalf("%s: revision %d, want > previous %d (revisions must increase across the whole store)", what, rev, last)
		}
		last = rev
	}
	rev, err := s.Put(ctx, "rev/a", []byte("1"))
	step("Put a", rev, err)
	rev, err = s.Put(ctx, "rev/b", []byte("1"))
	step("Put b", rev, err)
	rev, err = s.CompareAndSwap(ctx, "rev/c", []byte("1"), 0)
	step("CAS c", rev, err)
	rev, err = s.Batch(ctx, []store.Op{{Key: "rev/d", Value: []byte("1"), ExpectRevision: -1}, {Key: "rev/e", Value: []byte("1"), ExpectRevision: 0}})
	step("Batch d,e", rev, err)
	batchRev := rev
	rev, err = s.Put(ctx, "rev/a", []byte("2"))
	step("Put a again", rev, err)
	aRev := rev
	if err := s.Delete(ctx, "rev/b"); err != nil {
		t.Fatal(err)
	}
	rev, err = s.Put(ctx, "other/b", []byte("2"))
	step("Put other/b after Delete", rev, err)
	rev, err = s.CompareAndSwap(ctx, "rev/a", []byte("3"), aRev)
	step("CAS a", rev, err)
	aRev = rev
	for _, kv := range mustList(t, s, "rev/") {
		want := map[string]int64{"rev/a": aRev, "rev/d": batchRev, "rev/e": batchRev}[kv.Key]
		if want != 0 && kv.Revision != want {
			t.Errorf("List: %s revision %d, want %d", kv.Key, kv.Revision, want)
		}
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := t.Context()
	keys := []string{"a", "a/", "a/b", "a/b/x", "a/c", "ab", "b/a", "a/\x00", "a/\xff", "a/\xff\xff", "a/é", "a0", "c"}
	revs := map[string]int64{}
	for _, k := range keys {
		revs[k] = mustPut(t, s, k, []byte("v:"+k))
	}
	for _, prefix := range []string{"", "a", "a/", "a/b", "a/b/", "a/\xff", "a/\x00", "b", "b/a", "zz", "a/b/x/y", "\xff"} {
		t.Run(strconv.Quote(prefix), func(t *testing.T) {
			var want []string
			for _, k := range keys {
				if strings.HasPrefix(k, prefix) {
					want = append(want, k)
				}
			}
			sort.Strings(want)
			got, err := s.List(ctx, prefix)
			if err != nil {
				t.Fatalf("List(%q): %v", prefix, err)
			}
			if !slices.Equal(keysOf(got), want) {
				t.Fatalf("List(%q) keys = %q, want %q (sorted bytewise, prefix only)", prefix, keysOf(got), want)
			}
			for _, kv := range got {
				if string(kv.Value) != "v:"+kv.Key || kv.Revision != revs[kv.Key] {
					t.Errorf("List(%q): %q = {%q, rev %d}, want {%q, rev %d}", prefix, kv.Key, kv.Value, kv.Revision, "v:"+kv.Key, revs[kv.Key])
				}
			}
		})
	}
}

func testListMany(t *testing.T, s store.Store) {
	const n = 2500 // more than one page for paged backends
	var want []string
	for i := 0; i < n; i++ {
		want = append(want, fmt.Sprintf("many/%05d", i))
	}
	mustPutBatched(t, s, want, func(k string) []byte { return []byte(k) })
	mustPut(t, s, "manz", []byte("outside"))
	got := mustList(t, s, "many/")
	if !slices.Equal(keysOf(got), want) {
		t.Fatalf("List(many/) returned %d keys, want %d in order", len(got), n)
	}
	for _, kv := range got {
		if string(kv.Value) != kv.Key {
			t.Fatalf("List(many/): %q has value %q", kv.Key, kv.Value)
		}
	}
}

func testCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
	const k = "cas/k"
	r1, err := s.CompareAndSwap(ctx, k, []byte("v1"), 0)
	if err != nil || r1 <= 0 {
		t.Fatalf("create-only CAS on missing key = %d, %v; want success", r1, err)
	}
	checkKV(t, s, k, "v1", r1)

	conflicts := []struct {
		name   string
		key    string
		expect int64
	}{
		{"create-only on existing key", k, 0},
		{"stale revision", k, r1 - 1},
		{"future revision", k, r1 + 1000},
		{"revision on missing key", "cas/missing", r1},
	}
	for _, tc := range conflicts {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CompareAndSwap(ctx, tc.key, []byte("bad"), tc.expect)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("CAS(%q, expect %d) error = %v, want ErrConflict", tc.key, tc.expect, err)
			}
			checkKV(t, s, k, "v1", r1)
			expectNotFound(t, s, "cas/missing")
		})
	}
	if _, err := s.CompareAndSwap(ctx, k, []byte("bad"), -1); err == nil {
		t.Error("CAS with expectRevision -1 succeeded, want an error (use Put for unconditional writes)")
	}
	checkKV(t, s, k, "v1", r1)

	r2, err := s.CompareAndSwap(ctx, k, []byte("v2"), r1)
	if err != nil || r2 <= r1 {
		t.Fatalf("CAS with matching revision = %d, %v; want success with revision > %d", r2, err, r1)
	}
	checkKV(t, s, k, "v2", r2)
	if _, err := s.CompareAndSwap(ctx, k, []byte("bad"), r1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CAS with the replaced revision: %v, want ErrConflict", err)
	}
	if err := s.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(ctx, k, []byte("bad"), r2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CAS with the revision of a deleted key: %v, want ErrConflict", err)
	}
	r3, err := s.CompareAndSwap(ctx, k, []byte("v3"), 0)
	if err != nil {
		t.Fatalf("create-only CAS after delete: %v", err)
	}
	checkKV(t, s, k, "v3", r3)
}

func testBatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	rd := mustPut(t, s, "b/del", []byte("d"))
	r, err := s.Batch(ctx, []store.Op{
		{Key: "b/1", Value: []byte("one"), ExpectRevision: -1},
		{Key: "b/2", Value: []byte("two"), ExpectRevision: 0},
		{Key: "b/del", Delete: true, ExpectRevision: rd},
		{Key: "b/missing", Delete: true, ExpectRevision: -1},
	})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	if r <= rd {
		t.Errorf("Batch revision %d, want > %d", r, rd)
	}
	checkKV(t, s, "b/1", "one", r)
	checkKV(t, s, "b/2", "two", r)
	expectNotFound(t, s, "b/del")
	expectNotFound(t, s, "b/missing")

	r2, err := s.Batch(ctx, []store.Op{
		{Key: "b/1", Value: []byte("uno"), ExpectRevision: r},
		{Key: "b/2", Delete: true, ExpectRevision: r},
		{Key: "b/3", Value: []byte("tres"), ExpectRevision: 0},
	})
	if err != nil {
		t.Fatalf("conditional Batch with all conditions true: %v", err)
	}
	checkKV(t, s, "b/1", "uno", r2)
	expectNotFound(t, s, "b/2")
	checkKV(t, s, "b/3", "tres", r2)

	if _, err := s.Batch(ctx, nil); err != nil {
		t.Errorf("empty Batch: %v, want nil", err)
	}
	expectList(t, s, "b/", []string{"b/1", "b/3"})
}

func testBatchConflict(t *testing.T, s store.Store) {
	ctx := t.Context()
	ra := mustPut(t, s, "bc/a", []byte("a"))
	rb := mustPut(t, s, "bc/b", []byte("b"))
	put := func(k string, exp int64) store.Op { return store.Op{Key: k, Value: []byte("new"), ExpectRevision: exp} }
	del := func(k string, exp int64) store.Op { return store.Op{Key: k, Delete: true, ExpectRevision: exp} }
	tests := []struct {
		name string
		ops  []store.Op
	}{
		{"first condition fails", []store.Op{put("bc/a", ra+100), put("bc/b", rb), put("bc/new", -1)}},
		{"last condition fails", []store.Op{put("bc/new", 0), del("bc/a", ra), put("bc/b", ra)}},
		{"create-only on existing key", []store.Op{put("bc/new", -1), put("bc/a", 0)}},
		{"revision on missing key", []store.Op{del("bc/a", -1), put("bc/missing", rb)}},
		{"delete with stale revision", []store.Op{put("bc/new", 0), del("bc/b", rb-1)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := mustList(t, s, "")
			_, err := s.Batch(ctx, tc.ops)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("Batch error = %v, want ErrConflict", err)
			}
			if after := mustList(t, s, ""); !equalKVs(before, after) {
				t.Fatalf("a failed Batch changed the store: before %v, after %v", keysOf(before), keysOf(after))
			}
		})
	}
}

func testBatchInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, "bi/a", []byte("a"))
	tests := []struct {
		name string
		ops  []store.Op
	}{
		{"duplicate key", []store.Op{{Key: "bi/x", Value: []byte("1"), ExpectRevision: -1}, {Key: "bi/x", Value: []byte("2"), ExpectRevision: -1}}},
		{"put and delete of one key", []store.Op{{Key: "bi/a", Value: []byte("1"), ExpectRevision: -1}, {Key: "bi/a", Delete: true, ExpectRevision: -1}}},
		{"empty key", []store.Op{{Key: "bi/y", Value: []byte("1"), ExpectRevision: -1}, {Key: "", ExpectRevision: -1}}},
		{"expect revision below -1", []store.Op{{Key: "bi/y", Value: []byte("1"), ExpectRevision: -1}, {Key: "bi/z", ExpectRevision: -2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := mustList(t, s, "")
			_, err := s.Batch(ctx, tc.ops)
			if err == nil || errors.Is(err, store.ErrConflict) {
				t.Fatalf("Batch error = %v, want an invalid-batch error (not ErrConflict)", err)
			}
			if after := mustList(t, s, ""); !equalKVs(before, after) {
				t.Fatalf("an invalid Batch changed the store: before %v, after %v", keysOf(before), keysOf(after))
			}
		})
	}
}

func testMaxBatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	m := s.MaxBatch()
	if m > 20000 {
		t.Skipf("MaxBatch %d too large to exercise here", m)
	}
	ops := func(n int) []store.Op {
		out := make([]store.Op, n)
		for i := range out {
			out[i] = store.Op{Key: fmt.Sprintf("mb/%06d", i), Value: []byte{byte(i)}, ExpectRevision: -1}
		}
		return out
	}
	_, err := s.Batch(ctx, ops(m+1))
	if err == nil || errors.Is(err, store.ErrConflict) {
		t.Fatalf("Batch of MaxBatch+1 = %d ops: error %v, want a batch-too-large error", m+1, err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(m)) {
		t.Errorf("batch-too-large error %q does not state the limit %d", err, m)
	}
	expectList(t, s, "mb/", nil)
	rev, err := s.Batch(ctx, ops(m))
	if err != nil {
		t.Fatalf("Batch of exactly MaxBatch = %d ops: %v", m, err)
	}
	got := mustList(t, s, "mb/")
	if len(got) != m {
		t.Fatalf("after Batch of %d ops List has %d entries", m, len(got))
	}
	for _, kv := range got {
		if kv.Revision != rev {
			t.Fatalf("%s revision %d, want the batch revision %d", kv.Key, kv.Revision, rev)
		}
	}
}

func testWatch(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mustPut(t, s, "w/pre", []byte("before the watch"))
	ch, err := s.Watch(ctx, "w/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	ra := mustPut(t, s, "w/a", []byte("v1"))
	mustPut(t, s, "x/a", []byte("outside"))
	rw := mustPut(t, s, "w", []byte("outside: no slash"))
	if err := s.Delete(t.Context(), "w/a"); err != nil {
		t.Fatal(err)
	}
	rx := mustPut(t, s, "x/b", []byte("outside"))
	rb, err := s.Batch(t.Context(), []store.Op{
		{Key: "w/b", Value: []byte("vb"), ExpectRevision: -1},
		{Key: "y/z", Value: []byte("outside"), ExpectRevision: -1},
		{Key: "w/pre", Delete: true, ExpectRevision: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), "w/never-existed"); err != nil {
		t.Fatal(err)
	}
	rc, err := s.CompareAndSwap(t.Context(), "w/c", []byte("vc"), 0)
	if err != nil {
		t.Fatal(err)
	}
	re := mustPut(t, s, "w/end", []byte("sentinel"))

	want := []store.Event{
		{Type: store.EventPut, Key: "w/a", Value: []byte("v1"), Revision: ra},
		{Type: store.EventDelete, Key: "w/a"}, // revision checked as between rw and rx
		{Type: store.EventPut, Key: "w/b", Value: []byte("vb"), Revision: rb},
		{Type: store.EventDelete, Key: "w/pre", Revision: rb},
		{Type: store.EventPut, Key: "w/c", Value: []byte("vc"), Revision: rc},
		{Type: store.EventPut, Key: "w/end", Value: []byte("sentinel"), Revision: re},
	}
	for i, w := range want {
		got := recv(t, ch)
		if i == 1 && got.Revision > rw && got.Revision < rx {
			w.Revision = got.Revision
		}
		if !equalEvent(got, w) {
			t.Fatalf("event %d = %s, want %s", i, fmtEvent(got), fmtEvent(w))
		}
	}
	cancel()
	if extra := drainUntilClosed(t, ch); len(extra) > 0 {
		t.Errorf("unexpected events after the sentinel: %v", extra)
	}
}

func testWatchPrefixes(t *testing.T, s store.Store) {
	ctx := t.Context()
	all, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	wp, err := s.Watch(ctx, "wp/")
	if err != nil {
		t.Fatal(err)
	}
	wpa, err := s.Watch(ctx, "wp/a/")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"wp/a/1", "wp/b", "zz", "wp/a/2", "wp/a/end"} {
		mustPut(t, s, k, []byte(k))
	}
	mustPut(t, s, "wp/end", nil)
	mustPut(t, s, "end", nil)
	expectKeys := func(name string, ch <-chan store.Event, want []string) {
		t.Helper()
		for _, k := range want {
			if ev := recv(t, ch); ev.Key != k || ev.Type != store.EventPut {
				t.Fatalf("watch %s: got %s, want put %q", name, fmtEvent(ev), k)
			}
		}
	}
	expectKeys(`""`, all, []string{"wp/a/1", "wp/b", "zz", "wp/a/2", "wp/a/end", "wp/end", "end"})
	expectKeys("wp/", wp, []string{"wp/a/1", "wp/b", "wp/a/2", "wp/a/end", "wp/end"})
	expectKeys("wp/a/", wpa, []string{"wp/a/1", "wp/a/2", "wp/a/end"})
}

func testWatchCancelled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	ch, err := s.Watch(ctx, "wc/")
	if err != nil {
		return // refusing a dead context is fine
	}
	mustPut(t, s, "wc/a", []byte("x"))
	drainUntilClosed(t, ch)
}

func testConcurrentCAS(t *testing.T, s store.Store) {
	const (
		casWorkers   = 6
		batchWorkers = 3
		perWorker    = 15
	)
	ctx := t.Context()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		revs = map[int64]bool{}
	)
	record := func(rev int64) {
		mu.Lock()
		defer mu.Unlock()
		if revs[rev] {
			t.Errorf("revision %d returned by two successful writes", rev)
		}
		revs[rev] = true
	}
	for w := 0; w < casWorkers; w++ {
		wg.Go(func() {
			for i := 0; i < perWorker; i++ {
				rev, err := increment(ctx, s, "cc/counter")
				if err != nil {
					t.Error(err)
					return
				}
				record(rev)
			}
		})
	}
	for w := 0; w < batchWorkers; w++ {
		wg.Go(func() {
			for i := 0; i < perWorker; i++ {
				rev, err := incrementPair(ctx, s, "cc/pa", "cc/pb")
				if err != nil {
					t.Error(err)
					return
				}
				record(rev)
			}
		})
	}
	wg.Wait()
	if got := counterValue(t, s, "cc/counter"); got != casWorkers*perWorker {
		t.Errorf("counter = %d after %d CAS increments: updates were lost", got, casWorkers*perWorker)
	}
	for _, k := range []string{"cc/pa", "cc/pb"} {
		if got := counterValue(t, s, k); got != batchWorkers*perWorker {
			t.Errorf("%s = %d after %d batch increments: updates were lost", k, got, batchWorkers*perWorker)
		}
	}
}

func testBinary(t *testing.T, s store.Store) {
	ctx := t.Context()
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	ch, err := s.Watch(ctx, "bin/")
	if err != nil {
		t.Fatal(err)
	}
	binKey := "bin/" + string(all)
	rev := mustPut(t, s, binKey, all)
	kv := mustGet(t, s, binKey)
	if kv.Key != binKey || !bytes.Equal(kv.Value, all) || kv.Revision != rev {
		t.Fatalf("binary key/value did not round-trip through Get")
	}
	if ev := recv(t, ch); ev.Key != binKey || !bytes.Equal(ev.Value, all) {
		t.Fatalf("binary key/value did not round-trip through Watch")
	}
	keys := make([]string, 256)
	for i := range keys {
		keys[i] = fmt.Sprintf("byte/%03d", i)
	}
	mustPutBatched(t, s, keys, func(k string) []byte {
		n, _ := strconv.Atoi(k[len("byte/"):])
		return []byte{byte(n), byte(n)}
	})
	got := mustList(t, s, "byte/")
	if len(got) != 256 {
		t.Fatalf("List(byte/) = %d entries, want 256", len(got))
	}
	for i, kv := range got {
		if !bytes.Equal(kv.Value, []byte{byte(i), byte(i)}) {
			t.Errorf("byte value %d round-tripped as %x", i, kv.Value)
		}
	}
	bl := mustList(t, s, "bin/")
	if len(bl) != 1 || bl[0].Key != binKey || !bytes.Equal(bl[0].Value, all) {
		t.Errorf("binary key/value did not round-trip through List")
	}
}

func testNoAliasing(t *testing.T, s store.Store) {
	ctx := t.Context()
	buf := []byte("original")
	mustPut(t, s, "al/put", buf)
	buf[0] = 'X'
	checkValue(t, s, "al/put", "original")
	kv := mustGet(t, s, "al/put")
	kv.Value[0] = 'Y'
	checkValue(t, s, "al/put", "original")
	lst := mustList(t, s, "al/")
	lst[0].Value[0] = 'Z'
	checkValue(t, s, "al/put", "original")

	buf2 := []byte("batched")
	if _, err := s.Batch(ctx, []store.Op{{Key: "al/batch", Value: buf2, ExpectRevision: -1}}); err != nil {
		t.Fatal(err)
	}
	buf2[0] = 'X'
	checkValue(t, s, "al/batch", "batched")
	buf3 := []byte("swapped")
	if _, err := s.CompareAndSwap(ctx, "al/cas", buf3, 0); err != nil {
		t.Fatal(err)
	}
	buf3[0] = 'X'
	checkValue(t, s, "al/cas", "swapped")
}

func testCancelledContext(t *testing.T, s store.Store) {
	mustPut(t, s, "cx/a", []byte("a"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := map[string]func() error{
		"Get":    func() error { _, err := s.Get(ctx, "cx/a"); return err },
		"Put":    func() error { _, err := s.Put(ctx, "cx/b", []byte("b")); return err },
		"Delete": func() error { return s.Delete(ctx, "cx/a") },
		"List":   func() error { _, err := s.List(ctx, "cx/"); return err },
		"CAS":    func() error { _, err := s.CompareAndSwap(ctx, "cx/c", []byte("c"), 0); return err },
		"Batch": func() error {
			_, err := s.Batch(ctx, []store.Op{{Key: "cx/d", Value: []byte("d"), ExpectRevision: -1}})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: error %v, want one wrapping context.Canceled", name, err)
		}
	}
}

func testClose(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, "cl/a", []byte("a"))
	ch, err := s.Watch(ctx, "cl/")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	drainUntilClosed(t, ch)
	calls := map[string]func() error{
		"Get":    func() error { _, err := s.Get(ctx, "cl/a"); return err },
		"Put":    func() error { _, err := s.Put(ctx, "cl/b", []byte("b")); return err },
		"Delete": func() error { return s.Delete(ctx, "cl/a") },
		"List":   func() error { _, err := s.List(ctx, "cl/"); return err },
		"CAS":    func() error { _, err := s.CompareAndSwap(ctx, "cl/c", []byte("c"), 0); return err },
		"Batch": func() error {
			_, err := s.Batch(ctx, []store.Op{{Key: "cl/d", Value: []byte("d"), ExpectRevision: -1}})
			return err
		},
		"Watch": func() error { _, err := s.Watch(ctx, "cl/"); return err },
		"Close": s.Close,
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: error %v, want ErrClosed", name, err)
		}
	}
}

// RunMultiWriter checks that two Store instances opened on the same backend
// data (same etcd cluster and prefix) see each other's writes, conflicts and
// watch events. It does not close a or b.
func RunMultiWriter(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	t.Run("SeeEachOthersWrites", func(t *testing.T) {
		ra := mustPut(t, a, "mw/see/a", []byte("from a"))
		checkKV(t, b, "mw/see/a", "from a", ra)
		rb := mustPut(t, b, "mw/see/b", []byte("from b"))
		if rb <= ra {
			t.Errorf("b's revision %d not after a's %d: revisions must be global", rb, ra)
		}
		checkKV(t, a, "mw/see/b", "from b", rb)
		if err := a.Delete(ctx, "mw/see/b"); err != nil {
			t.Fatal(err)
		}
		expectNotFound(t, b, "mw/see/b")
		expectList(t, b, "mw/see/", []string{"mw/see/a"})
	})
	t.Run("ConflictAcrossInstances", func(t *testing.T) {
		r := mustPut(t, a, "mw/cas", []byte("0"))
		if _, err := a.CompareAndSwap(ctx, "mw/cas", []byte("a"), r); err != nil {
			t.Fatal(err)
		}
		if _, err := b.CompareAndSwap(ctx, "mw/cas", []byte("b"), r); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("b's CAS with the revision a replaced: %v, want ErrConflict", err)
		}
		if _, err := b.Batch(ctx, []store.Op{{Key: "mw/cas", Value: []byte("b"), ExpectRevision: r}}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("b's Batch with the revision a replaced: %v, want ErrConflict", err)
		}
		checkValue(t, b, "mw/cas", "a")
	})
	t.Run("WatchSeesOtherWriter", func(t *testing.T) {
		wa, err := a.Watch(ctx, "mw/w/")
		if err != nil {
			t.Fatal(err)
		}
		wb, err := b.Watch(ctx, "mw/w/")
		if err != nil {
			t.Fatal(err)
		}
		r1 := mustPut(t, a, "mw/w/1", []byte("a1"))
		r2, err := b.Batch(ctx, []store.Op{
			{Key: "mw/w/2", Value: []byte("b2"), ExpectRevision: 0},
			{Key: "mw/w/1", Delete: true, ExpectRevision: r1},
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []store.Event{
			{Type: store.EventPut, Key: "mw/w/1", Value: []byte("a1"), Revision: r1},
			{Type: store.EventPut, Key: "mw/w/2", Value: []byte("b2"), Revision: r2},
			{Type: store.EventDelete, Key: "mw/w/1", Revision: r2},
		}
		for name, ch := range map[string]<-chan store.Event{"a": wa, "b": wb} {
			for i, w := range want {
				if got := recv(t, ch); !equalEvent(got, w) {
					t.Fatalf("watcher on %s: event %d = %s, want %s", name, i, fmtEvent(got), fmtEvent(w))
				}
			}
		}
	})
	t.Run("ConcurrentIncrementsLoseNoUpdate", func(t *testing.T) {
		const workers, per = 6, 10
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			s := a
			if w%2 == 1 {
				s = b
			}
			wg.Go(func() {
				for i := 0; i < per; i++ {
					if _, err := increment(ctx, s, "mw/counter"); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if got := counterValue(t, a, "mw/counter"); got != workers*per {
			t.Errorf("counter = %d after %d increments through two instances: updates were lost", got, workers*per)
		}
	})
}

// Bench benchmarks the hot paths of s: Put, Get, CompareAndSwap, List of
// 100 entries and a Batch of 100 puts (if MaxBatch allows).
func Bench(b *testing.B, s store.Store) {
	ctx := context.Background()
	value := bytes.Repeat([]byte{0xA5}, 256)
	b.Run("Put", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Put(ctx, "bench/put/"+strconv.Itoa(i%1000), value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		if _, err := s.Put(ctx, "bench/get", value); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Get(ctx, "bench/get"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CompareAndSwap", func(b *testing.B) {
		rev, err := s.Put(ctx, "bench/cas", value)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if rev, err = s.CompareAndSwap(ctx, "bench/cas", value, rev); err != nil {
				b.Fatal(err)
			}
		}
	})
	if s.MaxBatch() < 100 {
		return
	}
	ops := make([]store.Op, 100)
	for i := range ops {
		ops[i] = store.Op{Key: fmt.Sprintf("bench/list/%03d", i), Value: value, ExpectRevision: -1}
	}
	b.Run("Batch100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Batch(ctx, ops); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("List100", func(b *testing.B) {
		if _, err := s.Batch(ctx, ops); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			kvs, err := s.List(ctx, "bench/list/")
			if err != nil || len(kvs) != 100 {
				b.Fatalf("List = %d entries, %v", len(kvs), err)
			}
		}
	})
}

// increment adds 1 to the decimal counter at key with a CAS retry loop.
func increment(ctx context.Context, s store.Store, key string) (int64, error) {
	for attempt := 0; attempt < 100000; attempt++ {
		n, rev, err := readCounter(ctx, s, key)
		if err != nil {
			return 0, err
		}
		newRev, err := s.CompareAndSwap(ctx, key, []byte(strconv.Itoa(n+1)), rev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("increment %s: %w", key, err)
		}
		return newRev, nil
	}
	return 0, fmt.Errorf("increment %s: gave up after 100000 conflicts", key)
}

// incrementPair adds 1 to two counters in one conditional Batch.
func incrementPair(ctx context.Context, s store.Store, k1, k2 string) (int64, error) {
	for attempt := 0; attempt < 100000; attempt++ {
		n1, r1, err := readCounter(ctx, s, k1)
		if err != nil {
			return 0, err
		}
		n2, r2, err := readCounter(ctx, s, k2)
		if err != nil {
			return 0, err
		}
		rev, err := s.Batch(ctx, []store.Op{
			{Key: k1, Value: []byte(strconv.Itoa(n1 + 1)), ExpectRevision: r1},
			{Key: k2, Value: []byte(strconv.Itoa(n2 + 1)), ExpectRevision: r2},
		})
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("increment %s,%s: %w", k1, k2, err)
		}
		return rev, nil
	}
	return 0, fmt.Errorf("increment %s,%s: gave up after 100000 conflicts", k1, k2)
}

func readCounter(ctx context.Context, s store.Store, key string) (n int, rev int64, err error) {
	kv, err := s.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read counter %s: %w", key, err)
	}
	n, err = strconv.Atoi(string(kv.Value))
	if err != nil {
		return 0, 0, fmt.Errorf("counter %s holds %q: %w", key, kv.Value, err)
	}
	return n, kv.Revision, nil
}

func counterValue(t *testing.T, s store.Store, key string) int {
	t.Helper()
	n, _, err := readCounter(t.Context(), s, key)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mustPut(t *testing.T, s store.Store, key string, value []byte) int64 {
	t.Helper()
	rev, err := s.Put(t.Context(), key, value)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

// mustPutBatched writes keys in unconditional batches of at most MaxBatch.
func mustPutBatched(t *testing.T, s store.Store, keys []string, value func(string) []byte) {
	t.Helper()
	for len(keys) > 0 {
		n := min(len(keys), s.MaxBatch(), 1000)
		ops := make([]store.Op, n)
		for i, k := range keys[:n] {
			ops[i] = store.Op{Key: k, Value: value(k), ExpectRevision: -1}
		}
		if _, err := s.Batch(t.Context(), ops); err != nil {
			t.Fatalf("Batch of %d puts: %v", n, err)
		}
		keys = keys[n:]
	}
}

func mustGet(t *testing.T, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return kv
}

func mustList(t *testing.T, s store.Store, prefix string) []store.KV {
	t.Helper()
	kvs, err := s.List(t.Context(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return kvs
}

func checkKV(t *testing.T, s store.Store, key, value string, rev int64) {
	t.Helper()
	kv := mustGet(t, s, key)
	if string(kv.Value) != value || kv.Revision != rev {
		t.Fatalf("Get(%q) = {%q, rev %d}, want {%q, rev %d}", key, kv.Value, kv.Revision, value, rev)
	}
}

func checkValue(t *testing.T, s store.Store, key, value string) {
	t.Helper()
	if kv := mustGet(t, s, key); string(kv.Value) != value {
		t.Fatalf("Get(%q) = %q, want %q", key, kv.Value, value)
	}
}

func expectNotFound(t *testing.T, s store.Store, key string) {
	t.Helper()
	if _, err := s.Get(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) error = %v, want ErrNotFound", key, err)
	}
}

func expectList(t *testing.T, s store.Store, prefix string, want []string) {
	t.Helper()
	if got := keysOf(mustList(t, s, prefix)); !slices.Equal(got, want) {
		t.Fatalf("List(%q) = %q, want %q", prefix, got, want)
	}
}

func keysOf(kvs []store.KV) []string {
	var out []string
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}

func equalKVs(a, b []store.KV) bool {
	return slices.EqualFunc(a, b, func(x, y store.KV) bool {
		return x.Key == y.Key && x.Revision == y.Revision && bytes.Equal(x.Value, y.Value)
	})
}

func equalEvent(a, b store.Event) bool {
	return a.Type == b.Type && a.Key == b.Key && a.Revision == b.Revision && bytes.Equal(a.Value, b.Value)
}

func fmtEvent(e store.Event) string {
	typ := map[store.EventType]string{store.EventPut: "put", store.EventDelete: "delete"}[e.Type]
	if typ == "" {
		typ = fmt.Sprintf("type(%d)", e.Type)
	}
	return fmt.Sprintf("%s %q=%q@%d", typ, e.Key, e.Value, e.Revision)
}

// recv returns the next event, failing if the channel closes or nothing
// arrives within waitTimeout.
func recv(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(waitTimeout):
		t.Fatalf("no watch event within %s", waitTimeout)
	}
	panic("unreachable")
}

// drainUntilClosed reads until ch is closed, failing if it stays open
// longer than waitTimeout. It returns the events read.
func drainUntilClosed(t *testing.T, ch <-chan store.Event) []string {
	t.Helper()
	var got []string
	timeout := time.After(waitTimeout)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return got
			}
			got = append(got, fmtEvent(ev))
		case <-timeout:
			t.Fatalf("watch channel not closed within %s", waitTimeout)
		}
	}
}
