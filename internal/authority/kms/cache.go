package kms

import (
	"context"
	"encoding/json"
	"errors"
	mrand "math/rand/v2"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// Watch keeps the cache in step with other writers (other authorities on
// the same etcd) until ctx ends. It re-lists on every (re)start.
func (m *Manager) Watch(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := m.st.Watch(ctx, keyPrefix)
		if err != nil {
			m.log.Warn("kms: cannot watch keys; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		m.invalidateAll()
		for ev := range ch {
			m.apply(ev)
		}
	}
}

func (m *Manager) invalidateAll() {
	m.mu.Lock()
	m.cache = map[string]*loaded{}
	m.mu.Unlock()
}

func (m *Manager) apply(ev store.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	name, known := m.names[ev.Key]
	if ev.Type == store.EventDelete {
		if known {
			delete(m.cache, name)
		}
		return
	}
	var rec KeyRecord
	if err := json.Unmarshal(ev.Value, &rec); err != nil {
		m.log.Warn("kms: unreadable key record in watch event", "path", ev.Key, "err", err)
		if known {
			delete(m.cache, name)
		}
		return
	}
	if cur, ok := m.cache[rec.Name]; ok && cur.rev >= ev.Revision {
		return
	}
	// Another writer changed the record: drop the cached copy so the next
	// use loads it and checks it against the audit log (a record copied
	// back into etcd arrives here too).
	if known && name != rec.Name {
		delete(m.cache, name)
	}
	delete(m.cache, rec.Name)
}

// get returns the cached key, loading it from the store on a miss.
func (m *Manager) get(ctx context.Context, name string) (*loaded, error) {
	m.mu.RLock()
	l, ok := m.cache[name]
	m.mu.RUnlock()
	if ok {
		return l, nil
	}
	return m.load(ctx, name)
}

func (m *Manager) load(ctx context.Context, name string) (*loaded, error) {
	if err := kmsfmt.ValidateKeyName(name); err != nil {
		return nil, errs.Errorf(errs.Invalid, "%v", err)
	}
	p := m.path(name)
	kv, err := m.st.Get(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		if err := m.checkMissing(ctx, name); err != nil {
			return nil, err
		}
		return nil, errs.Errorf(errs.NotFound, "key %q does not exist: create it with `ward key create %s --classification ...` or check the name with `ward key list`", name, name)
	}
	if err != nil {
		return nil, errs.Errorf(errs.Unavailable, "reading key %q: %v", name, err)
	}
	var rec KeyRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, errs.Errorf(errs.Unavailable, "key %q: stored record is unreadable: %v", name, err)
	}
	if rec.Name != name {
		return nil, errs.Errorf(errs.Unavailable, "key %q: stored record names another key; storage was tampered with", name)
	}
	digest := m.recordDigest(kv.Value)
	if err := m.checkRecord(ctx, &rec, digest); err != nil {
		return nil, err
	}
	l, err := m.prepare(rec, kv.Revision, digest)
	if err != nil {
		return nil, errs.Errorf(errs.Unavailable, "%v", err)
	}
	m.mu.Lock()
	if cur, ok := m.cache[name]; !ok || cur.rev < l.rev {
		m.cacheLocked(name, l)
		m.names[p] = name
	}
	m.mu.Unlock()
	return l, nil
}

// mutate applies f to a fresh copy of the key's record and stores it with
// compare-and-swap, retrying on conflicts with other writers.
func (m *Manager) mutate(ctx context.Context, name string, f func(rec *KeyRecord) error) (*loaded, error) {
	for attempt := 0; attempt < 64; attempt++ {
		if attempt > 0 {
			// Back off a little, with jitter, so contending writers spread out.
			time.Sleep(time.Duration(mrand.Int64N(int64(attempt)*int64(time.Millisecond) + 1)))
		}
		l, err := m.load(ctx, name)
		if err != nil {
			return nil, err
		}
		rec := cloneRecord(l.rec)
		if err := f(&rec); err != nil {
			return nil, err
		}
		rec.Revision = l.rec.Revision + 1
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, err
		}
		rev, err := m.st.CompareAndSwap(ctx, m.path(name), b, l.rev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, errs.Errorf(errs.Unavailable, "storing key %q: %v", name, err)
		}
		nl, err := m.prepare(rec, rev, m.recordDigest(b))
		if err != nil {
			return nil, errs.Errorf(errs.Unavailable, "%v", err)
		}
		m.mu.Lock()
		if cur, ok := m.cache[name]; !ok || cur.rev < rev {
			m.cacheLocked(name, nl)
		}
		m.mu.Unlock()
		return nl, nil
	}
	return nil, errs.Errorf(errs.Conflict, "key %q is being changed concurrently by another authority: retry", name)
}

// cacheLocked caches l, unless an HSM-held version of it could not be
// prepared (the HSM unreachable, its key missing): then the key is loaded
// again at its next use, so it works as soon as the HSM does.
func (m *Manager) cacheLocked(name string, l *loaded) {
	if len(l.unavailable) > 0 {
		delete(m.cache, name)
		return
	}
	m.cache[name] = l
}
