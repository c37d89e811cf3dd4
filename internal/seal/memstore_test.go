package seal

// memStore is a small in-memory store.Store for tests: it follows the
// contract in internal/store (global revisions, CAS, atomic batches,
// prefix watches that drop slow readers) and exposes its raw bytes so tests
// can scan for plaintext. Copied from internal/barrier.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/wardproject/ward/internal/store"
)

type memStore struct {
	mu       sync.Mutex
	data     map[string]store.KV
	rev      int64
	watchers map[*memWatcher]struct{}
	closed   bool
	// failBatch, when set, makes Batch fail without applying anything.
	failBatch error
}

type memWatcher struct {
	prefix string
	ch     chan store.Event
}

func newMemStore() *memStore {
	return &memStore{data: map[string]store.KV{}, watchers: map[*memWatcher]struct{}{}}
}

func (m *memStore) Get(_ context.Context, key string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return store.KV{}, store.ErrClosed
	}
	kv, ok := m.data[key]
	if !ok {
		return store.KV{}, fmt.Errorf("memstore: get %q: %w", key, store.ErrNotFound)
	}
	kv.Value = append([]byte(nil), kv.Value...)
	return kv, nil
}

func (m *memStore) Put(ctx context.Context, key string, value []byte) (int64, error) {
	return m.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: -1}})
}

func (m *memStore) Delete(ctx context.Context, key string) error {
	_, err := m.Batch(ctx, []store.Op{{Key: key, Delete: true, ExpectRevision: -1}})
	return err
}

func (m *memStore) List(_ context.Context, prefix string) ([]store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, store.ErrClosed
	}
	var out []store.KV
	for k, kv := range m.data {
		if strings.HasPrefix(k, prefix) {
			kv.Value = append([]byte(nil), kv.Value...)
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (m *memStore) CompareAndSwap(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	return m.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: expect}})
}

func (m *memStore) Batch(_ context.Context, ops []store.Op) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, store.ErrClosed
	}
	if len(ops) > m.MaxBatch() {
		return 0, fmt.Errorf("memstore: batch of %d ops exceeds %d", len(ops), m.MaxBatch())
	}
	if m.failBatch != nil {
		return 0, m.failBatch
	}
	for _, op := range ops {
		if op.Key == "" {
			return 0, fmt.Errorf("memstore: empty key")
		}
		if op.ExpectRevision < 0 {
			continue
		}
		if m.data[op.Key].Revision != op.ExpectRevision {
			return 0, fmt.Errorf("memstore: %q: %w", op.Key, store.ErrConflict)
		}
	}
	m.rev++
	for _, op := range ops {
		ev := store.Event{Key: op.Key, Revision: m.rev}
		if op.Delete {
			if _, ok := m.data[op.Key]; !ok {
				continue
			}
			delete(m.data, op.Key)
			ev.Type = store.EventDelete
		} else {
			v := append([]byte(nil), op.Value...)
			m.data[op.Key] = store.KV{Key: op.Key, Value: v, Revision: m.rev}
			ev.Type, ev.Value = store.EventPut, append([]byte(nil), v...)
		}
		for w := range m.watchers {
			if !strings.HasPrefix(op.Key, w.prefix) {
				continue
			}
			select {
			case w.ch <- ev:
			default: // slow reader: drop the watch
				close(w.ch)
				delete(m.watchers, w)
			}
		}
	}
	return m.rev, nil
}

func (m *memStore) MaxBatch() int { return 64 }

func (m *memStore) Watch(ctx context.Context, prefix string) (<-chan store.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, store.ErrClosed
	}
	w := &memWatcher{prefix: prefix, ch: make(chan store.Event, 256)}
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
		close(w.ch)
		delete(m.watchers, w)
	}
	return nil
}

// rawBytes returns every stored key and value concatenated, in key order.
func (m *memStore) rawBytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.data))
	for k := range m.data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b []byte
	for _, k := range keys {
		kv := m.data[k]
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// rawSet overwrites key's bytes behind the barrier's back.
func (m *memStore) rawSet(key string, value []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	m.data[key] = store.KV{Key: key, Value: append([]byte(nil), value...), Revision: m.rev}
}

func (m *memStore) rawGet(key string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[key].Value...)
}
