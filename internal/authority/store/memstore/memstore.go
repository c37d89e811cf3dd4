// Package memstore is an in-memory store.Store for tests and tools; it is not
// persistent. It keeps the whole storage contract (global revisions,
// compare-and-swap, conditional all-or-nothing batches bounded by MaxBatch,
// prefix watches that drop slow readers) and passes the storetest
// conformance suite. Beyond the contract it offers test hooks that act below
// the Store API, the way a faulty disk or an attacker with access to the
// backend would: raw reads and writes, values that fail to read back, and a
// hook that can stall or fail every write.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/wardproject/ward/internal/authority/store"
)

const (
	// DefaultMaxBatch is etcd's default transaction limit (--max-txn-ops),
	// the tightest of the real backends, so code tested against memstore
	// chunks its batches as it must in production.
	DefaultMaxBatch = 128
	// watchBuffer is how many undelivered events one watch may hold before
	// it is dropped as a slow reader.
	watchBuffer = 256
)

var (
	// ErrCorrupt is wrapped by Get and List for keys marked with SetCorrupt.
	ErrCorrupt = errors.New("memstore: stored value is corrupt (marked by SetCorrupt)")
	// ErrWatchUnsupported is returned by Watch on a store made WithoutWatch.
	ErrWatchUnsupported = errors.New("memstore: watch not supported (store made WithoutWatch)")
)

// Option configures New.
type Option func(*Store)

// WithMaxBatch sets MaxBatch (default DefaultMaxBatch). n must be at least 1.
func WithMaxBatch(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("memstore: WithMaxBatch(%d): the limit must be at least 1", n))
	}
	return func(s *Store) { s.maxBatch = n }
}

// WithoutWatch makes Watch fail with ErrWatchUnsupported, standing in for a
// backend without change notifications so callers' polling paths get tested.
func WithoutWatch() Option { return func(s *Store) { s.noWatch = true } }

// Store is an in-memory store.Store. The zero value is not usable; call New.
type Store struct {
	maxBatch int
	noWatch  bool

	mu         sync.Mutex
	kv         map[string]store.KV
	rev        int64
	closed     bool
	done       chan struct{} // closed by Close; ends watch goroutines
	watchers   map[*watcher]struct{}
	corrupt    map[string]bool
	batchHook  func([]store.Op) error
	batchSizes []int
}

type watcher struct {
	prefix string
	ch     chan store.Event
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{
		maxBatch: DefaultMaxBatch,
		kv:       map[string]store.KV{},
		done:     make(chan struct{}),
		watchers: map[*watcher]struct{}{},
		corrupt:  map[string]bool{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// checkLocked reports ErrClosed, then a finished ctx.
func (s *Store) checkLocked(ctx context.Context) error {
	if s.closed {
		return store.ErrClosed
	}
	return ctx.Err()
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return store.KV{}, err
	}
	if key == "" {
		return store.KV{}, errors.New("memstore: get: empty key")
	}
	if s.corrupt[key] {
		return store.KV{}, fmt.Errorf("memstore: get %q: %w", key, ErrCorrupt)
	}
	kv, ok := s.kv[key]
	if !ok {
		return store.KV{}, fmt.Errorf("memstore: get %q: %w", key, store.ErrNotFound)
	}
	kv.Value = bytes.Clone(kv.Value)
	return kv, nil
}

// Put implements store.Store as a one-op Batch.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	return s.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: -1}})
}

// Delete implements store.Store as a one-op Batch.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.Batch(ctx, []store.Op{{Key: key, Delete: true, ExpectRevision: -1}})
	return err
}

// List implements store.Store. It fails if any listed key is marked corrupt.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return nil, err
	}
	var out []store.KV
	for k, kv := range s.kv {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if s.corrupt[k] {
			return nil, fmt.Errorf("memstore: list %q: %q: %w", prefix, k, ErrCorrupt)
		}
		kv.Value = bytes.Clone(kv.Value)
		out = append(out, kv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// CompareAndSwap implements store.Store as a one-op conditional Batch.
func (s *Store) CompareAndSwap(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if expect < 0 {
		return 0, fmt.Errorf("memstore: compare-and-swap %q with negative revision %d: use Put", key, expect)
	}
	return s.Batch(ctx, []store.Op{{Key: key, Value: value, ExpectRevision: expect}})
}

// Batch implements store.Store. A hook set with SetBatchHook runs after the
// ops are validated and before their conditions are checked, without the
// store's lock held (so it may block or call back into the store).
func (s *Store) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	s.mu.Lock()
	if err := s.checkLocked(ctx); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	if len(ops) == 0 {
		defer s.mu.Unlock()
		return s.rev, nil
	}
	if err := s.validate(ops); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	if hook := s.batchHook; hook != nil {
		s.mu.Unlock()
		if err := hook(ops); err != nil {
			return 0, err
		}
		s.mu.Lock()
		if err := s.checkLocked(ctx); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	defer s.mu.Unlock()
	for _, op := range ops {
		if op.ExpectRevision < 0 {
			continue
		}
		cur, ok := s.kv[op.Key]
		if (op.ExpectRevision == 0 && ok) || (op.ExpectRevision > 0 && (!ok || cur.Revision != op.ExpectRevision)) {
			return 0, fmt.Errorf("memstore: batch op on %q expects revision %d: %w", op.Key, op.ExpectRevision, store.ErrConflict)
		}
	}
	s.rev++
	evs := make([]store.Event, 0, len(ops))
	for _, op := range ops {
		if op.Delete {
			if _, ok := s.kv[op.Key]; ok {
				delete(s.kv, op.Key)
				evs = append(evs, store.Event{Type: store.EventDelete, Key: op.Key, Revision: s.rev})
			}
			continue
		}
		v := bytes.Clone(op.Value)
		s.kv[op.Key] = store.KV{Key: op.Key, Value: v, Revision: s.rev}
		evs = append(evs, store.Event{Type: store.EventPut, Key: op.Key, Value: v, Revision: s.rev})
	}
	s.batchSizes = append(s.batchSizes, len(ops))
	s.notifyLocked(evs)
	return s.rev, nil
}

func (s *Store) validate(ops []store.Op) error {
	if len(ops) > s.maxBatch {
		return fmt.Errorf("memstore: batch of %d ops exceeds MaxBatch %d: split it", len(ops), s.maxBatch)
	}
	seen := make(map[string]bool, len(ops))
	for i, op := range ops {
		switch {
		case op.Key == "":
			return fmt.Errorf("memstore: batch op %d has an empty key", i)
		case op.ExpectRevision < -1:
			return fmt.Errorf("memstore: batch op on %q expects revision %d: use -1, 0 or a revision", op.Key, op.ExpectRevision)
		case seen[op.Key]:
			return fmt.Errorf("memstore: batch names %q twice", op.Key)
		}
		seen[op.Key] = true
	}
	return nil
}

// notifyLocked delivers evs to every matching watcher, each getting its own
// copy of the value, and drops a watcher whose buffer is full.
func (s *Store) notifyLocked(evs []store.Event) {
next:
	for w := range s.watchers {
		for _, ev := range evs {
			if !strings.HasPrefix(ev.Key, w.prefix) {
				continue
			}
			ev.Value = bytes.Clone(ev.Value)
			select {
			case w.ch <- ev:
			default: // slow reader: drop the watch, as the contract allows
				s.dropLocked(w)
				continue next
			}
		}
	}
}

func (s *Store) dropLocked(w *watcher) {
	if _, ok := s.watchers[w]; ok {
		delete(s.watchers, w)
		close(w.ch)
	}
}

// MaxBatch implements store.Store.
func (s *Store) MaxBatch() int { return s.maxBatch }

// Watch implements store.Store.
func (s *Store) Watch(ctx context.Context, prefix string) (<-chan store.Event, error) {
	if s.noWatch {
		return nil, ErrWatchUnsupported
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return nil, err
	}
	w := &watcher{prefix: prefix, ch: make(chan store.Event, watchBuffer)}
	s.watchers[w] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.done:
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dropLocked(w)
	}()
	return w.ch, nil
}

// Backend implements store.Store: "memory".
func (s *Store) Backend() string { return "memory" }

// Close implements store.Store: it ends every watch; further calls fail with
// store.ErrClosed. The raw accessors keep working.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	s.closed = true
	close(s.done)
	for w := range s.watchers {
		s.dropLocked(w)
	}
	return nil
}

// Test hooks. They act below the Store API: no conditions, no batch hook,
// no watch events, and they work on a closed store.

// SetCorrupt marks key so that Get of it, and List of any prefix covering
// it, fail with an error wrapping ErrCorrupt, as a backend (or the barrier
// above it) does for a value that no longer reads back. Raw still returns
// the stored bytes.
func (s *Store) SetCorrupt(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corrupt[key] = true
}

// SetBatchHook installs h to run before every write (Batch, and so Put,
// Delete and CompareAndSwap) is applied; an error from h aborts the write,
// applying nothing, and is returned as is. h may block to hold writers at
// that point. nil removes the hook.
func (s *Store) SetBatchHook(h func(ops []store.Op) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batchHook = h
}

// BatchSizes returns len(ops) of every applied write, in order (Put, Delete
// and CompareAndSwap count as batches of one).
func (s *Store) BatchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batchSizes)
}

// Raw returns a copy of key's stored bytes, or nil if key does not exist.
func (s *Store) Raw(key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.kv[key].Value)
}

// RawPut overwrites key's stored bytes with a copy of v, under a new
// revision, without notifying watchers.
func (s *Store) RawPut(key string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	s.kv[key] = store.KV{Key: key, Value: bytes.Clone(v), Revision: s.rev}
}

// RawDelete removes key without notifying watchers.
func (s *Store) RawDelete(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.kv, key)
}

// RawBytes returns everything stored, keys and values, as
// key 0x00 value 0x00 in key order: tests scan it for plaintext that must
// never reach storage.
func (s *Store) RawBytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.kv))
	for k := range s.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b []byte
	for _, k := range keys {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, s.kv[k].Value...)
		b = append(b, 0)
	}
	return b
}
