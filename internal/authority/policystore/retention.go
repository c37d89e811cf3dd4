package policystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// DefaultKeepVersions is how many versions before the current one the
// store keeps when policy.keep_versions is 0 or absent.
const DefaultKeepVersions = 50

// MaxKeepVersions bounds policy.keep_versions.
const MaxKeepVersions = 100000

// retentionKey records the oldest version still stored (versions are
// numbered without gaps, so every version from it to the latest is
// stored). Written in the batch of the commit that prunes (conditional on
// the revision read), so the history is always one unbroken run ending at
// the current version, never half pruned. Absent: nothing was ever pruned.
// Not under "policy/v/" (the versions' prefix).
const retentionKey = "policy/retention"

type retention struct {
	Oldest uint64 `json:"oldest"`
}

// WithKeepVersions keeps the current version and the n before it
// (policy.keep_versions); older ones are deleted by the commit that makes
// a new version, in its batch. n <= 0 means DefaultKeepVersions: there is
// no unlimited setting.
func WithKeepVersions(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.keep = n
		}
	}
}

// KeepVersions is how many versions before the current one are kept.
func (s *Store) KeepVersions() int { return s.keep }

// oldest reads the oldest stored version (1 when nothing was pruned) and
// the retention key's revision (0: absent).
func (s *Store) oldest(ctx context.Context) (uint64, int64, error) {
	kv, err := s.st.Get(ctx, retentionKey)
	if errors.Is(err, store.ErrNotFound) {
		return 1, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("reading the policy retention mark: %w", err)
	}
	var r retention
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.Oldest == 0 {
		return 0, 0, fmt.Errorf("the stored policy retention mark (%s) is unreadable; nothing was changed", retentionKey)
	}
	return r.Oldest, kv.Revision, nil
}

// OldestKept is the oldest version still stored (0 with no policy).
func (s *Store) OldestKept(ctx context.Context) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	h, _, err := s.versions.Head(ctx)
	if err != nil || h.Current == 0 {
		return 0, err
	}
	o, _, err := s.oldest(ctx)
	return o, err
}

// pruneOps are the ops that delete, in the batch storing version next,
// the versions before next-keep, oldest first, at most room of them (a
// store batch is bounded: a longer backlog, after an upgrade, a restore or
// a lowered keep_versions, is pruned by later batches, see pruneBacklog),
// and move the retention mark, conditional on its revision as read. It
// returns the ops, how many versions they delete and the version from
// which history is kept once they are applied.
func (s *Store) pruneOps(ctx context.Context, next uint64, room int) ([]store.Op, int, uint64, error) {
	from, rev, err := s.oldest(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	cut := s.cut(next)
	if cut <= from || room < 2 {
		return nil, 0, from, nil
	}
	to := min(cut, from+uint64(room-1))
	ops := make([]store.Op, 0, to-from+1)
	for n := from; n < to; n++ {
		ops = append(ops, store.Op{Key: s.versions.VersionKey(n), Delete: true, ExpectRevision: -1})
	}
	b, _ := json.Marshal(retention{Oldest: to})
	ops = append(ops, store.Op{Key: retentionKey, Value: b, ExpectRevision: rev})
	return ops, int(to - from), to, nil
}

// cut is the oldest version kept once version latest is stored.
func (s *Store) cut(latest uint64) uint64 {
	if latest <= uint64(s.keep) {
		return 1
	}
	return latest - uint64(s.keep)
}

// pruneBacklog deletes, in further bounded batches (each conditional on
// the retention mark and the head as read), what the commit of version
// latest could not fit in its own batch. It returns how many versions it
// deleted; an error leaves the rest to the next commit.
func (s *Store) pruneBacklog(ctx context.Context, latest uint64) (int, error) {
	pruned, lost := 0, 0
	for lost < 16 {
		hk, err := s.st.Get(ctx, s.versions.HeadKey())
		if err != nil {
			return pruned, err
		}
		h, _, err := s.versions.Head(ctx)
		if err != nil {
			return pruned, err
		}
		latest = max(latest, h.Next()-1)
		ops, n, _, err := s.pruneOps(ctx, latest, s.st.MaxBatch()-1)
		if err != nil || n == 0 {
			return pruned, err
		}
		// The head rewritten as read: a commit in between (which prunes
		// in its own batch) makes this batch fail and read again.
		ops = append(ops, store.Op{Key: hk.Key, Value: hk.Value, ExpectRevision: hk.Revision})
		if _, err := s.st.Batch(ctx, ops); errors.Is(err, store.ErrConflict) {
			lost++
			continue
		} else if err != nil {
			return pruned, err
		}
		pruned += n
	}
	return pruned, errs.Errorf(errs.Precondition, "pruning old policy versions kept losing races with other authorities: the next version continues")
}

// prunedError is the error of a read of version n, which was pruned.
func (s *Store) prunedError(ctx context.Context, n uint64, latest uint64) error {
	o, _, err := s.oldest(ctx)
	if err != nil || n >= o {
		return fmt.Errorf("%w: version %d (latest is %d)", ErrNotFound, n, latest)
	}
	return fmt.Errorf("%w: version %d was pruned: the authority keeps the current version and the %d before it (policy.keep_versions); "+
		"the oldest version still kept is %d, so use a version from %d to %d (`ward policy history`), or apply the old files again "+
		"with `ward policy apply`; nothing was changed", ErrNotFound, n, s.keep, o, o, latest)
}
