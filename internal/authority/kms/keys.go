package kms

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/errs"
)

// Get returns a key's view.
func (m *Manager) Get(ctx context.Context, name string) (View, error) {
	l, err := m.load(ctx, name)
	if err != nil {
		return View{}, err
	}
	return m.view(l), nil
}

// List returns all keys whose name starts with prefix, sorted by name. A
// key whose stored record was rolled back fails the whole listing, loudly,
// with the rollback error.
func (m *Manager) List(ctx context.Context, prefix string) ([]View, error) {
	return m.list(ctx, prefix, false)
}

// listHealthy is List for background jobs (scheduled rotation, metrics):
// rolled-back keys are reported and left out, the others go on.
func (m *Manager) listHealthy(ctx context.Context) ([]View, error) {
	return m.list(ctx, "", true)
}

func (m *Manager) list(ctx context.Context, prefix string, skipRolledBack bool) ([]View, error) {
	kvs, err := m.st.List(ctx, keyPrefix)
	if err != nil {
		return nil, errs.Errorf(errs.Unavailable, "listing keys: %v", err)
	}
	var out []View
	w := m.listWitness(ctx)
	for _, kv := range kvs {
		var rec KeyRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, errs.Errorf(errs.Unavailable, "stored key record %s is unreadable: %v", kv.Key, err)
		}
		if !strings.HasPrefix(rec.Name, prefix) {
			continue
		}
		if kv.Key != m.path(rec.Name) {
			return nil, errs.Errorf(errs.Unavailable, "stored key record %s names key %q, which lives elsewhere; storage was tampered with", kv.Key, rec.Name)
		}
		digest := m.recordDigest(kv.Value)
		if err := m.checkRecordWith(ctx, w, &rec, digest); err != nil {
			if skipRolledBack && errs.KindOf(err) == errs.RolledBack {
				continue
			}
			return nil, err
		}
		l, err := m.prepare(rec, kv.Revision, digest)
		if err != nil {
			return nil, errs.Errorf(errs.Unavailable, "%v", err)
		}
		out = append(out, m.view(l))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// KeyAges reports, for metrics, each key's age since its last rotation.
func (m *Manager) KeyAges(ctx context.Context) (map[string]time.Duration, error) {
	keys, err := m.listHealthy(ctx)
	if err != nil {
		return nil, err
	}
	now := m.now()
	out := make(map[string]time.Duration, len(keys))
	for _, k := range keys {
		out[k.Name] = now.Sub(k.LastRotated)
	}
	return out, nil
}

// Classification returns a key's classification from the cache (loading
// it on a miss), for authorization decisions on the hot path.
func (m *Manager) Classification(ctx context.Context, name string) (string, error) {
	l, err := m.get(ctx, name)
	if err != nil {
		return "", err
	}
	return l.rec.Classification, nil
}
