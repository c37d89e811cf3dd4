package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/store"
	"github.com/wardproject/ward/internal/store/storetest"
)

// errBarrier stands in for the barrier's AEAD failure on an edited value.
var errBarrier = errors.New("barrier: message authentication failed")

// memStore is an in-memory store.Store honouring the contract: a global
// revision, CAS, conditional all-or-nothing Batch with ErrConflict,
// MaxBatch, Watch. Tests use its hooks to inject faults and tampering.
type memStore struct {
	mu       sync.Mutex
	kv       map[string]store.KV
	rev      int64
	maxBatch int
	closed   bool
	watchers map[*memWatch]struct{}

	corrupt    map[string]bool            // Get/List of these keys fail like the barrier would
	batchHook  func(ops []store.Op) error // runs before a Batch applies; an error aborts it
	batchSizes []int                      // len(ops) of every applied Batch
}

type memWatch struct {
	prefix string
	ch     chan store.Event
}

func newMemStore(maxBatch int) *memStore {
	return &memStore{kv: map[string]store.KV{}, maxBatch: maxBatch, watchers: map[*memWatch]struct{}{}, corrupt: map[string]bool{}}
}

func (m *memStore) check(ctx context.Context) error {
	if m.closed {
		return store.ErrClosed
	}
	return ctx.Err()
}

func (m *memStore) Get(ctx context.Context, key string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return store.KV{}, err
	}
	if key == "" {
		return store.KV{}, errors.New("memstore: empty key")
	}
	if m.corrupt[key] {
		return store.KV{}, fmt.Errorf("reading %q: %w", key, errBarrier)
	}
	kv, ok := m.kv[key]
	if !ok {
		return store.KV{}, fmt.Errorf("%q: %w", key, store.ErrNotFound)
	}
	kv.Value = bytes.Clone(kv.Value)
	return kv, nil
}

func (m *memStore) Put(ctx context.Context, key string, value []byte) (int64, error) {
	return m.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: -1}})
}

func (m *memStore) Delete(ctx context.Context, key string) error {
	_, err := m.Batch(ctx, []store.Op{{Key: key, Delete: true, ExpectRevision: -1}})
	return err
}

func (m *memStore) List(ctx context.Context, prefix string) ([]store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	var out []store.KV
	for k, kv := range m.kv {
		if strings.HasPrefix(k, prefix) {
			if m.corrupt[k] {
				return nil, fmt.Errorf("listing %q: %q: %w", prefix, k, errBarrier)
			}
			kv.Value = bytes.Clone(kv.Value)
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (m *memStore) CompareAndSwap(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if expect < 0 {
		return 0, fmt.Errorf("memstore: CAS %q with negative revision %d: use Put", key, expect)
	}
	return m.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: expect}})
}

func (m *memStore) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	m.mu.Lock()
	if err := m.check(ctx); err != nil {
		m.mu.Unlock()
		return 0, err
	}
	if len(ops) == 0 {
		defer m.mu.Unlock()
		return m.rev, nil
	}
	if err := m.validate(ops); err != nil {
		m.mu.Unlock()
		return 0, err
	}
	if m.batchHook != nil {
		hook := m.batchHook
		m.mu.Unlock()
		if err := hook(ops); err != nil {
			return 0, err
		}
		m.mu.Lock()
		if err := m.check(ctx); err != nil {
			m.mu.Unlock()
			return 0, err
		}
	}
	for _, op := range ops {
		if op.ExpectRevision < 0 {
			continue
		}
		cur, ok := m.kv[op.Key]
		if (op.ExpectRevision == 0 && ok) || (op.ExpectRevision > 0 && (!ok || cur.Revision != op.ExpectRevision)) {
			m.mu.Unlock()
			return 0, fmt.Errorf("batch on %q: %w", op.Key, store.ErrConflict)
		}
	}
	m.rev++
	rev := m.rev
	var evs []store.Event
	for _, op := range ops {
		if op.Delete {
			if _, ok := m.kv[op.Key]; ok {
				delete(m.kv, op.Key)
				evs = append(evs, store.Event{Type: store.EventDelete, Key: op.Key, Revision: rev})
			}
			continue
		}
		v := bytes.Clone(op.Value)
		m.kv[op.Key] = store.KV{Key: op.Key, Value: v, Revision: rev}
		evs = append(evs, store.Event{Type: store.EventPut, Key: op.Key, Value: bytes.Clone(v), Revision: rev})
	}
	m.batchSizes = append(m.batchSizes, len(ops))
	for w := range m.watchers {
		for _, ev := range evs {
			if !strings.HasPrefix(ev.Key, w.prefix) {
				continue
			}
			select {
			case w.ch <- ev:
			default: // slow reader: drop the watch, as the contract allows
				delete(m.watchers, w)
				close(w.ch)
			}
			if _, ok := m.watchers[w]; !ok {
				break
			}
		}
	}
	m.mu.Unlock()
	return rev, nil
}

func (m *memStore) validate(ops []store.Op) error {
	if len(ops) > m.maxBatch {
		return fmt.Errorf("memstore: batch of %d ops exceeds MaxBatch %d", len(ops), m.maxBatch)
	}
	seen := make(map[string]bool, len(ops))
	for _, op := range ops {
		switch {
		case op.Key == "":
			return errors.New("memstore: batch op with empty key")
		case op.ExpectRevision < -1:
			return fmt.Errorf("memstore: batch op on %q expects revision %d", op.Key, op.ExpectRevision)
		case seen[op.Key]:
			return fmt.Errorf("memstore: batch names %q twice", op.Key)
		}
		seen[op.Key] = true
	}
	return nil
}

func (m *memStore) MaxBatch() int { return m.maxBatch }

func (m *memStore) Watch(ctx context.Context, prefix string) (<-chan store.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	w := &memWatch{prefix: prefix, ch: make(chan store.Event, 64)}
	m.watchers[w] = struct{}{}
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.watchers[w]; ok {
			delete(m.watchers, w)
			close(w.ch)
		}
	}()
	return w.ch, nil
}

func (m *memStore) Backend() string { return "memory" }

func (m *memStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return store.ErrClosed
	}
	m.closed = true
	for w := range m.watchers {
		delete(m.watchers, w)
		close(w.ch)
	}
	return nil
}

// Tampering helpers: they act below the barrier (raw storage access).

func (m *memStore) setCorrupt(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.corrupt[key] = true
}

func (m *memStore) raw(key string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.kv[key].Value)
}

func (m *memStore) rawPut(key string, v []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	m.kv[key] = store.KV{Key: key, Value: bytes.Clone(v), Revision: m.rev}
}

func (m *memStore) rawDelete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.kv, key)
}

func (m *memStore) setBatchHook(h func(ops []store.Op) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.batchHook = h
}

// TestMemStoreContract checks the fake itself, so that the audit tests
// built on it prove something.
func TestMemStoreBasics(t *testing.T) {
	ctx := context.Background()
	m := newMemStore(3)
	r1, err := m.Put(ctx, "a", []byte("1"))
	if err != nil || r1 != 1 {
		t.Fatalf("Put: rev %d, %v", r1, err)
	}
	if _, err := m.CompareAndSwap(ctx, "a", []byte("2"), 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CAS on existing key with 0: %v, want conflict", err)
	}
	if _, err := m.CompareAndSwap(ctx, "a", []byte("2"), r1); err != nil {
		t.Fatalf("CAS: %v", err)
	}
	_, err = m.Batch(ctx, []store.Op{{Key: "b", Value: []byte("x"), ExpectRevision: 0}, {Key: "a", Value: []byte("3"), ExpectRevision: r1}})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale batch: %v, want conflict", err)
	}
	if _, err := m.Get(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed batch applied partly: %v", err)
	}
	if _, err := m.Batch(ctx, make([]store.Op, 4)); err == nil {
		t.Fatal("batch over MaxBatch accepted")
	}
	kvs, err := m.List(ctx, "")
	if err != nil || len(kvs) != 1 || string(kvs[0].Value) != "2" {
		t.Fatalf("List: %v %v", kvs, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ch, err := m.Watch(wctx, "w/")
	if err != nil {
		t.Fatal(err)
	}
	m.Put(ctx, "x", nil)
	m.Put(ctx, "w/1", []byte("v"))
	if ev := <-ch; ev.Key != "w/1" || ev.Type != store.EventPut {
		t.Fatalf("watch event %+v", ev)
	}
	cancel()
	for range ch {
	}
	m.Close()
	if _, err := m.Get(ctx, "a"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

// TestMemStoreConformance runs the backends' conformance suite on the fake,
// plain and with etcd's batch limit.
func TestMemStoreConformance(t *testing.T) {
	for _, maxBatch := range []int{10000, 128} {
		t.Run(fmt.Sprint("maxbatch=", maxBatch), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				s := newMemStore(maxBatch)
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}
