// Package versioned keeps one document in immutable numbered versions over
// the storage contract: each version is written atomically with the head
// that names the current one (a compare-and-swap on the head), so several
// authorities on one etcd agree on the numbering. What a document is, how
// it is parsed and how its changes are audited stay with its owner
// (policystore, posturestore).
package versioned

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// attempts bounds Commit's retries when the head moved under it.
const attempts = 16

// Head names the current version and, where the owner keeps it, the
// newest one ever stored (Latest; 0 when not kept).
type Head struct {
	Current uint64 `json:"current"`
	Latest  uint64 `json:"latest,omitempty"`
}

// Next is the number the next version gets: versions only grow.
func (h Head) Next() uint64 { return max(h.Current, h.Latest) + 1 }

// Store keeps versions of V (JSON) under prefix and the head at headKey.
type Store[V any] struct {
	st         store.Store
	what       string // "policy", "posture": named in errors
	headKey    string
	prefix     string
	keepLatest bool
	number     func(V) uint64
}

// New returns the store of the document named what (keys what+"/head" and
// what+"/v/"). number reads a version's number; keepLatest writes
// Head.Latest with each commit.
func New[V any](st store.Store, what string, keepLatest bool, number func(V) uint64) *Store[V] {
	return &Store[V]{st: st, what: what, headKey: what + "/head", prefix: what + "/v/", keepLatest: keepLatest, number: number}
}

// HeadKey is the key of the head (watch it to follow changes).
func (s *Store[V]) HeadKey() string { return s.headKey }

func (s *Store[V]) versionKey(n uint64) string { return fmt.Sprintf("%s%020d", s.prefix, n) }

// VersionKey is the key version n is stored under (for an owner that
// prunes old versions in the batch of a commit, see CommitWith).
func (s *Store[V]) VersionKey(n uint64) string { return s.versionKey(n) }

// Head reads the head and its revision (a zero Head and revision 0 when
// nothing was stored yet).
func (s *Store[V]) Head(ctx context.Context) (Head, int64, error) {
	kv, err := s.st.Get(ctx, s.headKey)
	if errors.Is(err, store.ErrNotFound) {
		return Head{}, 0, nil
	}
	if err != nil {
		return Head{}, 0, err
	}
	var h Head
	if err := json.Unmarshal(kv.Value, &h); err != nil {
		return Head{}, 0, fmt.Errorf("stored %s head is unreadable: %w", s.what, err)
	}
	return h, kv.Revision, nil
}

// Version reads version n; an error wrapping store.ErrNotFound when there
// is none.
func (s *Store[V]) Version(ctx context.Context, n uint64) (V, error) {
	var v V
	kv, err := s.st.Get(ctx, s.versionKey(n))
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return v, fmt.Errorf("stored %s version %d is unreadable: %w", s.what, n, err)
	}
	return v, nil
}

// List returns every version, oldest first, and the head.
func (s *Store[V]) List(ctx context.Context) ([]V, Head, error) {
	h, _, err := s.Head(ctx)
	if err != nil {
		return nil, Head{}, err
	}
	kvs, err := s.st.List(ctx, s.prefix)
	if err != nil {
		return nil, Head{}, err
	}
	out := make([]V, 0, len(kvs))
	for _, kv := range kvs {
		var v V
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, Head{}, fmt.Errorf("stored %s version %s is unreadable: %w", s.what, kv.Key, err)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return s.number(out[i]) < s.number(out[j]) })
	return out, h, nil
}

// Commit stores the version build makes from the head it read (numbered
// head.Next()) as the new current one, atomically with the head. When
// another writer moved the head in between, it reads again and rebuilds
// (bounded); an error of build's is returned as it is.
func (s *Store[V]) Commit(ctx context.Context, build func(h Head) (V, error)) (V, error) {
	return s.CommitWith(ctx, func(h Head) (V, []store.Op, error) {
		v, err := build(h)
		return v, nil, err
	})
}

// CommitWith is Commit with build's ops stored in the same batch: guards
// (a key rewritten at the revision build read, or deleted while it must
// not exist) on other state the version depended on, so that a change of
// it in between fails the batch and build runs again.
func (s *Store[V]) CommitWith(ctx context.Context, build func(h Head) (V, []store.Op, error)) (V, error) {
	var zero V
	for attempt := 0; attempt < attempts; attempt++ {
		h, rev, err := s.Head(ctx)
		if err != nil {
			return zero, err
		}
		v, guards, err := build(h)
		if err != nil {
			return zero, err
		}
		n := s.number(v)
		vb, err := json.Marshal(v)
		if err != nil {
			return zero, err
		}
		next := Head{Current: n}
		if s.keepLatest {
			next.Latest = n
		}
		hb, _ := json.Marshal(next)
		// rev 0 (no head yet) means "head must not exist".
		_, err = s.st.Batch(ctx, append([]store.Op{
			{Key: s.versionKey(n), Value: vb, ExpectRevision: 0},
			{Key: s.headKey, Value: hb, ExpectRevision: rev},
		}, guards...))
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return zero, err
		}
		return v, nil
	}
	return zero, errs.Errorf(errs.Precondition, "the %s is being changed concurrently by another authority: retry", s.what)
}
