package ca_test

import (
	"context"
	"errors"
	"sync"

	"github.com/wardproject/ward/internal/store"
)

// mapStore is the smallest store.Store the example needs (Get and
// CompareAndSwap; the rest refuse).
type mapStore struct {
	mu   sync.Mutex
	rev  int64
	data map[string]store.KV
}

func newMapStore() *mapStore { return &mapStore{data: map[string]store.KV{}} }

func (m *mapStore) Get(_ context.Context, k string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if kv, ok := m.data[k]; ok {
		return kv, nil
	}
	return store.KV{}, store.ErrNotFound
}

func (m *mapStore) CompareAndSwap(_ context.Context, k string, v []byte, expect int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data[k].Revision != expect {
		return 0, store.ErrConflict
	}
	m.rev++
	m.data[k] = store.KV{Key: k, Value: v, Revision: m.rev}
	return m.rev, nil
}

var errUnsupported = errors.New("mapstore: not supported")

func (m *mapStore) Put(context.Context, string, []byte) (int64, error) { return 0, errUnsupported }
func (m *mapStore) Delete(context.Context, string) error               { return errUnsupported }
func (m *mapStore) List(context.Context, string) ([]store.KV, error)   { return nil, errUnsupported }
func (m *mapStore) Batch(context.Context, []store.Op) (int64, error)   { return 0, errUnsupported }
func (m *mapStore) MaxBatch() int                                      { return 0 }
func (m *mapStore) Watch(context.Context, string) (<-chan store.Event, error) {
	return nil, errUnsupported
}
func (m *mapStore) Backend() string { return "map" }
func (m *mapStore) Close() error    { return nil }
