package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/storetest"
)

// TestConformance runs the backends' conformance suite, with bbolt's batch
// limit and with etcd's.
func TestConformance(t *testing.T) {
	for _, maxBatch := range []int{10000, 128} {
		t.Run(fmt.Sprint("maxbatch=", maxBatch), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				s := New(WithMaxBatch(maxBatch))
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}

func TestOptions(t *testing.T) {
	if s := New(); s.MaxBatch() != DefaultMaxBatch || s.Backend() != "memory" {
		t.Fatalf("New() MaxBatch/Backend = %d/%q, want %d/memory", s.MaxBatch(), s.Backend(), DefaultMaxBatch)
	}
	ctx := context.Background()
	s := New(WithMaxBatch(3))
	ops := func(n int) []store.Op {
		out := make([]store.Op, n)
		for i := range out {
			out[i] = store.Op{Key: fmt.Sprint("k", i), Value: []byte("v"), ExpectRevision: -1}
		}
		return out
	}
	if _, err := s.Batch(ctx, ops(3)); err != nil {
		t.Fatalf("batch of MaxBatch ops: %v", err)
	}
	before := s.RawBytes()
	if _, err := s.Batch(ctx, ops(4)); err == nil {
		t.Fatal("batch over MaxBatch accepted")
	}
	if !bytes.Equal(before, s.RawBytes()) {
		t.Fatal("rejected batch changed the store")
	}
	for _, n := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("WithMaxBatch(%d) did not panic", n)
				}
			}()
			WithMaxBatch(n)
		}()
	}
	nw := New(WithoutWatch())
	if ch, err := nw.Watch(ctx, ""); !errors.Is(err, ErrWatchUnsupported) || ch != nil {
		t.Fatalf("Watch WithoutWatch = %v, %v; want ErrWatchUnsupported", ch, err)
	}
	if _, err := nw.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Put WithoutWatch: %v", err)
	}
}

func TestSetCorrupt(t *testing.T) {
	ctx := context.Background()
	s := New()
	for _, k := range []string{"a", "c/1", "c/2"} {
		if _, err := s.Put(ctx, k, []byte("value of "+k)); err != nil {
			t.Fatal(err)
		}
	}
	s.SetCorrupt("c/1")
	s.SetCorrupt("never-written")
	tests := []struct {
		name    string
		op      func() error
		corrupt bool
	}{
		{"get marked", func() error { _, err := s.Get(ctx, "c/1"); return err }, true},
		{"get marked missing key", func() error { _, err := s.Get(ctx, "never-written"); return err }, true},
		{"list covering", func() error { _, err := s.List(ctx, "c/"); return err }, true},
		{"list all", func() error { _, err := s.List(ctx, ""); return err }, true},
		{"get other", func() error { _, err := s.Get(ctx, "c/2"); return err }, false},
		{"list not covering", func() error { _, err := s.List(ctx, "a"); return err }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if tc.corrupt && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v, want ErrCorrupt", err)
			}
			if !tc.corrupt && err != nil {
				t.Fatalf("error %v on an unmarked key", err)
			}
		})
	}
	if got := s.Raw("c/1"); string(got) != "value of c/1" {
		t.Fatalf("Raw of a corrupt key = %q, want the stored bytes", got)
	}
}

func TestBatchHookAbortsWrites(t *testing.T) {
	ctx := context.Background()
	errDown := errors.New("disk full")
	writes := []struct {
		name string
		op   func(s *Store, rev int64) error
		want []store.Op
	}{
		{"put", func(s *Store, _ int64) error { _, err := s.Put(ctx, "new", []byte("x")); return err },
			[]store.Op{{Key: "new", Value: []byte("x"), ExpectRevision: -1}}},
		{"delete", func(s *Store, _ int64) error { return s.Delete(ctx, "k") },
			[]store.Op{{Key: "k", Delete: true, ExpectRevision: -1}}},
		{"cas", func(s *Store, rev int64) error { _, err := s.CompareAndSwap(ctx, "k", []byte("y"), rev); return err },
			[]store.Op{{Key: "k", Value: []byte("y"), ExpectRevision: 1}}},
		{"batch", func(s *Store, rev int64) error {
			_, err := s.Batch(ctx, []store.Op{{Key: "k", Delete: true, ExpectRevision: rev}, {Key: "n", Value: []byte("z"), ExpectRevision: 0}})
			return err
		}, []store.Op{{Key: "k", Delete: true, ExpectRevision: 1}, {Key: "n", Value: []byte("z"), ExpectRevision: 0}}},
	}
	for _, tc := range writes {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			rev, err := s.Put(ctx, "k", []byte("v"))
			if err != nil || rev != 1 {
				t.Fatalf("Put = %d, %v", rev, err)
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ch, err := s.Watch(wctx, "")
			if err != nil {
				t.Fatal(err)
			}
			var seen []store.Op
			s.SetBatchHook(func(ops []store.Op) error { seen = slices.Clone(ops); return errDown })
			before, sizes := s.RawBytes(), s.BatchSizes()
			if err := tc.op(s, rev); !errors.Is(err, errDown) {
				t.Fatalf("write with a failing hook: %v, want the hook's error", err)
			}
			if !slices.EqualFunc(seen, tc.want, func(a, b store.Op) bool {
				return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.Delete == b.Delete && a.ExpectRevision == b.ExpectRevision
			}) {
				t.Fatalf("hook saw %+v, want %+v", seen, tc.want)
			}
			if !bytes.Equal(before, s.RawBytes()) || !slices.Equal(sizes, s.BatchSizes()) {
				t.Fatal("aborted write changed the store")
			}
			s.SetBatchHook(nil)
			if err := tc.op(s, rev); err != nil {
				t.Fatalf("write after removing the hook: %v", err)
			}
			if ev := <-ch; ev.Revision != 2 {
				t.Fatalf("first event %+v: the aborted write was announced", ev)
			}
		})
	}
}

// TestBatchHookMayBlock: a hook holds a writer without holding the store,
// and the writer's conditions are checked after the hook returns.
func TestBatchHookMayBlock(t *testing.T) {
	ctx := context.Background()
	s := New()
	rev, _ := s.Put(ctx, "k", []byte("v1"))
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	s.SetBatchHook(func([]store.Op) error {
		if first { // hold the first writer only; later ones start after entered closes
			first = false
			close(entered)
			<-release
		}
		return nil
	})
	res := make(chan error, 1)
	go func() {
		_, err := s.CompareAndSwap(ctx, "k", []byte("held"), rev)
		res <- err
	}()
	<-entered
	if kv, err := s.Get(ctx, "k"); err != nil || string(kv.Value) != "v1" {
		t.Fatalf("Get while a writer is held = %q, %v", kv.Value, err)
	}
	if _, err := s.Put(ctx, "k", []byte("v2")); err != nil {
		t.Fatalf("Put while a writer is held: %v", err)
	}
	close(release)
	if err := <-res; !errors.Is(err, store.ErrConflict) {
		t.Fatalf("held CAS after a concurrent write: %v, want ErrConflict", err)
	}
	if kv, _ := s.Get(ctx, "k"); string(kv.Value) != "v2" {
		t.Fatalf("value %q, want v2", kv.Value)
	}
}

func TestBatchSizes(t *testing.T) {
	ctx := context.Background()
	s := New()
	s.Put(ctx, "a", []byte("1"))
	s.Batch(ctx, []store.Op{{Key: "b", ExpectRevision: -1}, {Key: "c", ExpectRevision: -1}, {Key: "d", ExpectRevision: 0}})
	if _, err := s.Batch(ctx, []store.Op{{Key: "a", ExpectRevision: 0}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting batch: %v", err)
	}
	s.Batch(ctx, nil)
	s.Delete(ctx, "a")
	got := s.BatchSizes()
	if want := []int{1, 3, 1}; !slices.Equal(got, want) {
		t.Fatalf("BatchSizes = %v, want %v (applied writes only)", got, want)
	}
	got[0] = 99
	if s.BatchSizes()[0] != 1 {
		t.Fatal("BatchSizes returned the store's own slice")
	}
}

func TestRawAccess(t *testing.T) {
	ctx := context.Background()
	s := New()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.Watch(wctx, "")
	if err != nil {
		t.Fatal(err)
	}
	rev, _ := s.Put(ctx, "b", []byte("2"))
	if ev := <-ch; ev.Key != "b" {
		t.Fatalf("event %+v", ev)
	}
	if s.Raw("missing") != nil {
		t.Fatal("Raw of a missing key is not nil")
	}
	v := []byte("1")
	s.RawPut("a", v)
	v[0] = 'X'
	kv, err := s.Get(ctx, "a")
	if err != nil || string(kv.Value) != "1" || kv.Revision <= rev {
		t.Fatalf("Get after RawPut = %+v, %v; want value 1 with a revision above %d", kv, err, rev)
	}
	r := s.Raw("a")
	r[0] = 'Y'
	if string(s.Raw("a")) != "1" {
		t.Fatal("Raw aliases the stored value")
	}
	s.RawPut("e", nil)
	if want := "a\x001\x00b\x002\x00e\x00\x00"; string(s.RawBytes()) != want {
		t.Fatalf("RawBytes = %q, want %q", s.RawBytes(), want)
	}
	s.RawDelete("a")
	s.RawDelete("e")
	if _, err := s.Get(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after RawDelete: %v", err)
	}
	last, _ := s.Put(ctx, "z", nil)
	if ev := <-ch; ev.Key != "z" || ev.Revision != last {
		t.Fatalf("event %+v after raw writes, want the put of z: raw writes were announced", ev)
	}
	s.Close()
	s.RawPut("after", []byte("close"))
	if string(s.Raw("after")) != "close" || string(s.RawBytes()) != "after\x00close\x00b\x002\x00z\x00\x00" {
		t.Fatalf("raw access after Close: %q", s.RawBytes())
	}
}

// TestSlowWatcherDropped: a watcher that stops reading is closed once its
// buffer fills, after every event it did get; other watchers carry on.
func TestSlowWatcherDropped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New()
	slow, _ := s.Watch(ctx, "s/")
	other, _ := s.Watch(ctx, "o/")
	for i := range watchBuffer + 10 {
		if _, err := s.Put(ctx, fmt.Sprintf("s/%04d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for ev := range slow {
		if want := fmt.Sprintf("s/%04d", n); ev.Key != want {
			t.Fatalf("event %d is %q, want %q", n, ev.Key, want)
		}
		n++
	}
	if n != watchBuffer {
		t.Fatalf("slow watcher got %d events before closing, want %d", n, watchBuffer)
	}
	s.Put(ctx, "o/1", []byte("v"))
	if ev, ok := <-other; !ok || ev.Key != "o/1" {
		t.Fatalf("other watcher: %+v, open=%v", ev, ok)
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, New(WithMaxBatch(10000)))
}
