package policystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

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
	// Applies are the newest versions made by an apply or a rollback, at
	// most pinCount, oldest first; Pinned are
	// those of them already pruned, each kept under pinnedKey (see
	// MaxPinnedVersions).
	Applies []uint64 `json:"applies,omitempty"`
	Pinned  []uint64 `json:"pinned,omitempty"`
}

// MaxPinnedVersions bounds how many of the newest versions made by an
// operator's apply or rollback are kept even once pruned:
// min(policy.keep_versions, MaxPinnedVersions) of them. Every other
// commit (an agent's displacement, an eviction, a federated trust
// domain's revocations or catalog, principals) makes a version too, so
// callers with little or no privilege (a compromised agent, a federated
// peer) could otherwise push every operator's version out of the window
// and leave nothing to roll back to. A pinned version is stored under
// pinnedPrefix, outside the unbroken run of versions, written in the
// batch that prunes it and deleted in the batch of the apply that makes
// it one too many; Get, and so rollback, show and diff, read it there.
const MaxPinnedVersions = 16

// pinnedPrefix holds the pinned versions (not under "policy/v/").
const pinnedPrefix = "policy/pinned/"

func pinnedKey(n uint64) string { return fmt.Sprintf("%s%020d", pinnedPrefix, n) }

// pinCount is how many of the newest applies and rollbacks are kept
// pinned once pruned.
func (s *Store) pinCount() int { return min(s.keep, MaxPinnedVersions) }

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

// readRetention reads the retention mark (Oldest 1 when absent) and its
// revision (0: absent).
func (s *Store) readRetention(ctx context.Context) (retention, int64, error) {
	kv, err := s.st.Get(ctx, retentionKey)
	if errors.Is(err, store.ErrNotFound) {
		return retention{Oldest: 1}, 0, nil
	}
	if err != nil {
		return retention{}, 0, fmt.Errorf("reading the policy retention mark: %w", err)
	}
	var r retention
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.Oldest == 0 {
		return retention{}, 0, fmt.Errorf("the stored policy retention mark (%s) is unreadable; nothing was changed", retentionKey)
	}
	return r, kv.Revision, nil
}

// pinned reads pruned version n where it is pinned (ok false: it is not).
func (s *Store) pinned(ctx context.Context, n uint64) (Version, bool, error) {
	kv, err := s.st.Get(ctx, pinnedKey(n))
	if errors.Is(err, store.ErrNotFound) {
		return Version{}, false, nil
	}
	if err != nil {
		return Version{}, false, err
	}
	var v Version
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return Version{}, false, fmt.Errorf("pinned policy version %d is unreadable: %w", n, err)
	}
	return v, true, nil
}

// OldestKept is the oldest version still stored (0 with no policy).
func (s *Store) OldestKept(ctx context.Context) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	h, _, err := s.versions.Head(ctx)
	if err != nil || h.Current == 0 {
		return 0, err
	}
	r, _, err := s.readRetention(ctx)
	return r.Oldest, err
}

// pruneOps are the ops that delete, in the batch storing version next
// (operator: made by an apply or a rollback), the versions before next-keep,
// oldest first, at most about room ops' worth (a store batch is bounded:
// a longer backlog, after an upgrade, a restore or a lowered
// keep_versions, is pruned by later batches, see pruneBacklog), pin those
// of them among the newest applies and rollbacks (and unpin
// the one next pushes out of them), and move the retention mark,
// conditional on its revision as read. It returns the ops, how many
// versions they delete and the version from which history is kept once
// they are applied.
func (s *Store) pruneOps(ctx context.Context, next uint64, operator bool, room int) ([]store.Op, int, uint64, error) {
	r, rev, err := s.readRetention(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	from := r.Oldest
	applies := slices.Clone(r.Applies)
	if operator {
		applies = append(applies, next)
	}
	if over := len(applies) - s.pinCount(); over > 0 {
		applies = applies[over:]
	}
	var ops []store.Op
	var pinned []uint64
	for _, p := range r.Pinned {
		if slices.Contains(applies, p) {
			pinned = append(pinned, p)
		} else { // pushed out by newer applies
			ops = append(ops, store.Op{Key: pinnedKey(p), Delete: true, ExpectRevision: -1})
		}
	}
	to := from
	if cut := s.cut(next); cut > from && room >= 2 {
		for n := from; n < cut; n++ {
			pin := slices.Contains(applies, n)
			need := 1
			if pin {
				need = 2
			}
			if len(ops)+need+1 > room { // the retention mark is the last op
				break
			}
			if pin {
				kv, err := s.st.Get(ctx, s.versions.VersionKey(n))
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return nil, 0, 0, err
				}
				if err == nil {
					ops = append(ops, store.Op{Key: pinnedKey(n), Value: kv.Value, ExpectRevision: -1})
					pinned = append(pinned, n)
				}
			}
			ops = append(ops, store.Op{Key: s.versions.VersionKey(n), Delete: true, ExpectRevision: -1})
			to = n + 1
		}
	}
	if to == from && len(ops) == 0 && slices.Equal(applies, r.Applies) {
		return nil, 0, from, nil
	}
	b, _ := json.Marshal(retention{Oldest: to, Applies: applies, Pinned: pinned})
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
		ops, n, _, err := s.pruneOps(ctx, latest, false, s.st.MaxBatch()-1)
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
	r, _, err := s.readRetention(ctx)
	if err != nil || n >= r.Oldest {
		return fmt.Errorf("%w: version %d (latest is %d)", ErrNotFound, n, latest)
	}
	o := r.Oldest
	pinned := ""
	if len(r.Pinned) > 0 {
		pinned = fmt.Sprintf(" or a pinned one (the newest applies and rollbacks, kept beyond that: %s)", strings.Trim(fmt.Sprint(r.Pinned), "[]"))
	}
	return fmt.Errorf("%w: version %d was pruned: the authority keeps the current version and the %d before it (policy.keep_versions); "+
		"the oldest version still kept is %d, so use a version from %d to %d (`ward policy history`)%s, or apply the old files again "+
		"with `ward policy apply`; nothing was changed", ErrNotFound, n, s.keep, o, o, latest, pinned)
}
