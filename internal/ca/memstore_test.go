package ca

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/wardproject/ward/internal/store"
)

// memStore is a minimal in-memory store.Store for tests (no Watch events).
type memStore struct {
	mu   sync.Mutex
	rev  int64
	data map[string]store.KV
	// failCAS, when set, is returned by CompareAndSwap.
	failCAS error
	// watchers get every write (when watchable).
	watchable bool
	watchers  []chan store.Event
}

func (m *memStore) emitLocked(kv store.KV) {
	for _, w := range m.watchers {
		select {
		case w <- store.Event{Type: store.EventPut, Key: kv.Key, Value: kv.Value, Revision: kv.Revision}:
		default:
		}
	}
}

func newMemStore() *memStore { return &memStore{data: map[string]store.KV{}} }

func (m *memStore) Get(_ context.Context, key string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kv, ok := m.data[key]
	if !ok {
		return store.KV{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	kv.Value = append([]byte(nil), kv.Value...)
	return kv, nil
}

func (m *memStore) Put(_ context.Context, key string, value []byte) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	m.data[key] = store.KV{Key: key, Value: append([]byte(nil), value...), Revision: m.rev}
	return m.rev, nil
}

func (m *memStore) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.data, key)
	return nil
}

func (m *memStore) List(_ context.Context, prefix string) ([]store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.KV
	for k, v := range m.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (m *memStore) CompareAndSwap(_ context.Context, key string, value []byte, expect int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failCAS != nil {
		return 0, m.failCAS
	}
	if m.data[key].Revision != expect {
		return 0, fmt.Errorf("cas %q: %w", key, store.ErrConflict)
	}
	m.rev++
	m.data[key] = store.KV{Key: key, Value: append([]byte(nil), value...), Revision: m.rev}
	m.emitLocked(m.data[key])
	return m.rev, nil
}

func (m *memStore) Batch(context.Context, []store.Op) (int64, error) {
	return 0, errors.New("memstore: batch not supported")
}
func (m *memStore) MaxBatch() int { return 0 }
func (m *memStore) Watch(ctx context.Context, _ string) (<-chan store.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.watchable {
		return nil, errors.New("memstore: watch not supported")
	}
	ch := make(chan store.Event, 16)
	m.watchers = append(m.watchers, ch)
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		defer m.mu.Unlock()
		for i, w := range m.watchers {
			if w == ch {
				m.watchers = append(m.watchers[:i], m.watchers[i+1:]...)
				close(ch)
				return
			}
		}
	}()
	return ch, nil
}
func (m *memStore) Backend() string { return "mem" }
func (m *memStore) Close() error    { return nil }
