package barrier

import (
	"context"
	"fmt"
	"sync"

	"github.com/wardproject/ward/internal/authority/store"
)

// view is the encrypting store.Store returned by Barrier.Store.
type view struct {
	b         *Barrier
	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

var _ store.Store = (*view)(nil)

// check rejects calls on a closed view and on reserved or empty keys.
func (v *view) check(op, key string) error {
	select {
	case <-v.done:
		return fmt.Errorf("barrier: %s %q: %w", op, key, store.ErrClosed)
	default:
	}
	if key == "" {
		return fmt.Errorf("barrier: %s: the key is empty; keys are non-empty strings", op)
	}
	if reserved(key) {
		return fmt.Errorf("barrier: %s %q: %w", op, key, ErrReservedKey)
	}
	return nil
}

func (v *view) checkPrefix(op, prefix string) error {
	select {
	case <-v.done:
		return fmt.Errorf("barrier: %s %q: %w", op, prefix, store.ErrClosed)
	default:
	}
	if reserved(prefix) {
		return fmt.Errorf("barrier: %s prefix %q: %w", op, prefix, ErrReservedKey)
	}
	return nil
}

func sealedErr(op, key string) error {
	return fmt.Errorf("barrier: %s %q: %w", op, key, ErrSealed)
}

func (v *view) Get(ctx context.Context, key string) (store.KV, error) {
	if err := v.check("get", key); err != nil {
		return store.KV{}, err
	}
	lookup, err := v.b.lookup()
	if err != nil {
		return store.KV{}, sealedErr("get", key)
	}
	kv, err := v.b.raw.Get(ctx, key)
	if err != nil {
		return store.KV{}, err
	}
	_, pt, err := openValue(lookup, key, kv.Value)
	if err != nil {
		return store.KV{}, err
	}
	kv.Value = pt
	return kv, nil
}

func (v *view) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := v.check("put", key); err != nil {
		return 0, err
	}
	a, term, err := v.b.activeAEAD()
	if err != nil {
		return 0, sealedErr("put", key)
	}
	return v.b.raw.Put(ctx, key, sealValue(a, term, key, value))
}

func (v *view) Delete(ctx context.Context, key string) error {
	if err := v.check("delete", key); err != nil {
		return err
	}
	if v.b.Sealed() {
		return sealedErr("delete", key)
	}
	return v.b.raw.Delete(ctx, key)
}

func (v *view) List(ctx context.Context, prefix string) ([]store.KV, error) {
	if err := v.checkPrefix("list", prefix); err != nil {
		return nil, err
	}
	lookup, err := v.b.lookup()
	if err != nil {
		return nil, sealedErr("list", prefix)
	}
	kvs, err := v.b.raw.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]store.KV, 0, len(kvs))
	for _, kv := range kvs {
		if reserved(kv.Key) {
			continue
		}
		_, pt, err := openValue(lookup, kv.Key, kv.Value)
		if err != nil {
			return nil, err
		}
		kv.Value = pt
		out = append(out, kv)
	}
	return out, nil
}

func (v *view) CompareAndSwap(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error) {
	if err := v.check("compare-and-swap", key); err != nil {
		return 0, err
	}
	a, term, err := v.b.activeAEAD()
	if err != nil {
		return 0, sealedErr("compare-and-swap", key)
	}
	return v.b.raw.CompareAndSwap(ctx, key, sealValue(a, term, key, value), expectRevision)
}

func (v *view) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	for i, op := range ops {
		if err := v.check("batch", op.Key); err != nil {
			return 0, fmt.Errorf("op %d: %w", i+1, err)
		}
	}
	a, term, err := v.b.activeAEAD()
	if err != nil {
		return 0, fmt.Errorf("barrier: batch of %d ops: %w", len(ops), ErrSealed)
	}
	// Every value sealed into one buffer (each its own full slice, never
	// written again), the additional data built in one scratch buffer.
	size := 0
	for _, op := range ops {
		if !op.Delete {
			size += sealedSize(op.Value)
		}
	}
	buf, scratch := make([]byte, 0, size), []byte(nil)
	enc := make([]store.Op, len(ops))
	for i, op := range ops {
		enc[i] = op
		if op.Delete {
			enc[i].Value = nil
			continue
		}
		at := len(buf)
		buf, scratch = appendSealed(buf, scratch, a, term, op.Key, op.Value)
		enc[i].Value = buf[at:len(buf):len(buf)]
	}
	return v.b.raw.Batch(ctx, enc)
}

func (v *view) MaxBatch() int { return v.b.raw.MaxBatch() }

// Watch decrypts events from the raw store's watch. The channel closes when
// ctx ends, the view is closed, the barrier is sealed, the backend drops
// the watch, or an event fails authentication (re-listing then reports the
// failing key).
func (v *view) Watch(ctx context.Context, prefix string) (<-chan store.Event, error) {
	if err := v.checkPrefix("watch", prefix); err != nil {
		return nil, err
	}
	sealed, err := v.b.sealedChan()
	if err != nil {
		return nil, sealedErr("watch", prefix)
	}
	wctx, cancel := context.WithCancel(ctx)
	in, err := v.b.raw.Watch(wctx, prefix)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan store.Event, 16)
	go func() {
		defer close(out)
		defer cancel()
		for {
			var ev store.Event
			var ok bool
			select {
			case ev, ok = <-in:
				if !ok {
					return
				}
			case <-sealed:
				return
			case <-v.done:
				return
			case <-wctx.Done():
				return
			}
			if reserved(ev.Key) {
				continue
			}
			if ev.Type == store.EventPut {
				lookup, err := v.b.lookup()
				if err != nil {
					return
				}
				if _, ev.Value, err = openValue(lookup, ev.Key, ev.Value); err != nil {
					return
				}
			}
			select {
			case out <- ev:
			case <-sealed:
				return
			case <-v.done:
				return
			case <-wctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Backend names the underlying backend.
func (v *view) Backend() string { return v.b.raw.Backend() }

// Close ends this view and its watches; later calls return store.ErrClosed.
// The raw store stays open: its owner closes it.
func (v *view) Close() error {
	closed := false
	v.closeOnce.Do(func() { close(v.done); closed = true })
	if !closed {
		return fmt.Errorf("barrier: view: %w", store.ErrClosed)
	}
	return nil
}
