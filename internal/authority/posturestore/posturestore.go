// Package posturestore keeps the authority's declared security posture
// (internal/shared/posture, docs/governance.md) in versions, as
// policystore keeps policy: a file is parsed strictly before anything is
// stored (nothing is applied on error), each change becomes a new
// immutable version written atomically with the head that names the
// current one, and every change is audited ("posture.set").
package posturestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/versioned"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/posture"
)

const maxComment = 1024

// ErrNoPosture means no posture has been declared yet.
var ErrNoPosture = errs.New(errs.NotFound, "no posture has been declared yet: declare one with `ward posture set -f FILE` (docs/governance.md)")

// Version is one stored posture version.
type Version struct {
	Number  uint64    `json:"number"`
	Created time.Time `json:"created"`
	Actor   string    `json:"actor"`
	Comment string    `json:"comment,omitempty"`
	// Source is the YAML file as given.
	Source []byte `json:"source"`
}

// Digest is the hex SHA-256 of the version's file.
func (v Version) Digest() string {
	sum := sha256.Sum256(v.Source)
	return hex.EncodeToString(sum[:])
}

// File parses the stored file (it parsed when stored; classifications
// may have changed since, so they are not checked again).
func (v Version) File() (*posture.File, error) { return posture.Parse(v.Source, nil) }

// Store is the posture version store. Safe for concurrent use.
type Store struct {
	versions        *versioned.Store[Version]
	audit           audit.Recorder
	classifications []string
	now             func() time.Time
}

// New returns a Store over st (barrier-encrypted) recording through a;
// classifications are the KMS classifications a posture may name.
func New(st store.Store, a audit.Recorder, classifications []string) *Store {
	return &Store{
		versions: versioned.New(st, "posture", false, func(v Version) uint64 { return v.Number }),
		audit:    a, classifications: classifications, now: time.Now,
	}
}

// Get returns version n (0 = current).
func (s *Store) Get(ctx context.Context, n uint64) (Version, error) {
	h, _, err := s.versions.Head(ctx)
	if err != nil {
		return Version{}, err
	}
	if n == 0 {
		if h.Current == 0 {
			return Version{}, ErrNoPosture
		}
		n = h.Current
	}
	v, err := s.versions.Version(ctx, n)
	if errors.Is(err, store.ErrNotFound) {
		return Version{}, errs.Errorf(errs.NotFound, "posture version %d not found (the current one is %d): ward posture history lists them", n, h.Current)
	}
	return v, err
}

// List returns every version, oldest first, and the current number.
func (s *Store) List(ctx context.Context) ([]Version, uint64, error) {
	vs, h, err := s.versions.List(ctx)
	return vs, h.Current, err
}

// Set parses src strictly and stores it as the new current version. A
// file that does not parse changes nothing (the error names the field and
// the fix, as errs.Invalid).
func (s *Store) Set(ctx context.Context, actor string, src []byte, comment string) (Version, error) {
	if len(comment) > maxComment {
		return Version{}, errs.Errorf(errs.Invalid, "comment is %d bytes: at most %d", len(comment), maxComment)
	}
	if _, err := posture.Parse(src, s.classifications); err != nil {
		_ = s.record(ctx, audit.ResultError, 0, "", err)
		return Version{}, errs.Wrap(errs.Invalid, err, "")
	}
	// Nothing is stored unless its audit trail can be written: a started
	// event first, as policy changes do.
	if err := s.record(ctx, audit.ResultStarted, 0, "", nil); err != nil {
		return Version{}, fmt.Errorf("audit log unavailable, posture.set refused: %w", err)
	}
	// Versions only grow: the next number follows the newest stored, which
	// is the current one (there is no rollback that moves it back; setting
	// an old file again makes a new version).
	v, err := s.versions.Commit(ctx, func(h versioned.Head) (Version, error) {
		return Version{Number: h.Next(), Created: s.now().UTC(), Actor: actor, Comment: comment, Source: append([]byte(nil), src...)}, nil
	})
	if err != nil {
		return Version{}, s.fail(ctx, err)
	}
	if err := s.record(ctx, audit.ResultOK, v.Number, v.Digest(), nil); err != nil {
		return v, fmt.Errorf("posture version %d stored but its audit event could not be written: %w", v.Number, err)
	}
	return v, nil
}

func (s *Store) fail(ctx context.Context, err error) error {
	_ = s.record(ctx, audit.ResultError, 0, "", err)
	return err
}

func (s *Store) record(ctx context.Context, result string, version uint64, digest string, opErr error) error {
	ev := audit.NewEvent(ctx, "posture.set", result)
	if opErr != nil {
		ev.Error = opErr.Error()
	}
	if version != 0 {
		ev.Fields = map[string]string{"posture_version": fmt.Sprint(version), "digest": digest}
	}
	return s.audit.Record(ctx, ev)
}
