// Package policystore keeps the authority's versioned policy sets: every
// apply, rollback and revocation compiles the whole bundle first (nothing
// is ever half applied) and stores it as a new immutable version, and the
// current version is published to watchers (agents, proxies) as it changes.
// Versions live in the barrier-encrypted store, written atomically with
// the head that points at the current one, so several authorities on one
// etcd agree on the numbering.
package policystore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/versioned"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
)

// ErrNoPolicy means no policy version has been applied yet.
var ErrNoPolicy = errs.New(errs.NotFound, "no policy has been applied yet: apply one with `ward policy apply FILE...`")

// ErrNotFound means the requested version does not exist.
var ErrNotFound = errs.New(errs.NotFound, "policy version not found")

// Version is one stored policy set version.
type Version struct {
	Number       uint64        `json:"number"`
	Created      time.Time     `json:"created"`
	Actor        string        `json:"actor"`
	Comment      string        `json:"comment,omitempty"`
	RestoredFrom uint64        `json:"restored_from,omitempty"`
	Bundle       policy.Bundle `json:"bundle"`
	PolicyCount  int           `json:"policy_count"`
	// SerialsNotAfter is the NotAfter of the deny-list's serials revoked
	// until then (RevokeExpiring: an evicted agent's SVIDs): the first
	// version after it drops such a serial, so the list stays bounded. Kept
	// beside the bundle, not in it (enforcement points need only the list).
	SerialsNotAfter map[string]time.Time `json:"serials_not_after,omitempty"`
}

// BundleJSON is the version's bundle as distributed.
func (v Version) BundleJSON() ([]byte, error) { return policy.MarshalBundle(v.Bundle) }

// Digest is the hex SHA-256 of BundleJSON.
func (v Version) Digest() string {
	b, err := v.BundleJSON()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Store is the policy version store. Safe for concurrent use.
type Store struct {
	st         store.Store
	versions   *versioned.Store[Version]
	audit      audit.Recorder
	schema     *policy.Schema
	now        func() time.Time
	principals PrincipalsFunc
	tainted    func() []string
	remote     func() map[string]policy.DenyList
	services   func() map[string][]catalog.Service
	td         string
	strictFed  bool
	keep       int
	lintMu     sync.Mutex
	lintCache  map[uint64][]string // LintStatus: the current version's warnings
}

// PrincipalsFunc returns the attributes (labels, groups) of every known
// workload identity, from the registration entries.
type PrincipalsFunc func(ctx context.Context) (map[string]policy.Principal, error)

// Option configures a Store.
type Option func(*Store)

// WithPrincipals makes every new version carry the principals' attributes
// as f reports them at that moment.
func WithPrincipals(f PrincipalsFunc) Option { return func(s *Store) { s.principals = f } }

// WithTaintedKeys makes every new version's deny-list carry the CA key IDs
// f reports (the CA's tainted keys), in addition to those the current
// version already holds. So a policy applied after a taint, on any
// authority sharing the store, still refuses chains through the key, even
// if the taint's own version was never written.
func WithTaintedKeys(f func() []string) Option { return func(s *Store) { s.tainted = f } }

// WithRemoteDenyLists makes every new version carry the remote deny-lists
// f reports: what federated trust domains published about their own
// identities (federation's revocation channel), by trust domain.
func WithRemoteDenyLists(f func() map[string]policy.DenyList) Option {
	return func(s *Store) { s.remote = f }
}

// WithServices makes every new version carry the services catalog f
// reports (this trust domain's exported services and those federated
// trust domains sent), by trust domain.
func WithServices(f func() map[string][]catalog.Service) Option {
	return func(s *Store) { s.services = f }
}

// WithTrustDomain is the authority's own trust domain: Revoke refuses
// SPIFFE IDs of any other (a trust domain only revokes its own identities;
// its federated peers learn of them over the revocation channel).
func WithTrustDomain(td string) Option { return func(s *Store) { s.td = td } }

// WithStrictFederationLint (this authority's policy.federation_lint:
// strict) makes the store refuse (store nothing) a new
// set of policies one of whose permits does not constrain the caller's
// trust domain (policy.KindFederation warnings; the authority's
// policy.federation_lint: strict). Without it such a set is stored and
// its warnings are recorded in the change's audit event. Only versions
// whose policy files differ from the current version's are checked
// (apply, rollback): a revocation, a taint or a refresh of the current
// policies is never refused by the lint. The cluster's stored mode
// (FederationLint) is enforced as well: strict if either says so.
func WithStrictFederationLint(strict bool) Option { return func(s *Store) { s.strictFed = strict } }

// WithClock sets the clock that dates versions and prunes expired serials
// from the deny-list (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// New returns a Store over st (barrier-encrypted) that records every
// change through a (an error there means the change does not happen: fail
// closed).
func New(st store.Store, a audit.Recorder, opts ...Option) *Store {
	s := &Store{st: st, audit: a, schema: policy.DefaultSchema(), now: time.Now, keep: DefaultKeepVersions,
		versions: versioned.New(st, "policy", true, func(v Version) uint64 { return v.Number })}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Get returns version n (0 = current).
func (s *Store) Get(ctx context.Context, n uint64) (_ Version, err error) {
	defer func() { err = classify(err) }()
	for try := 0; ; try++ {
		h, _, err := s.versions.Head(ctx)
		if err != nil {
			return Version{}, err
		}
		want := n
		if n == 0 {
			if h.Current == 0 {
				return Version{}, ErrNoPolicy
			}
			want = h.Current
		}
		v, err := s.versions.Version(ctx, want)
		if errors.Is(err, store.ErrNotFound) {
			if n == 0 && try < 8 {
				// the current version read was pruned by the commits of
				// other authorities since: read the head again
				continue
			}
			if n != 0 { // an apply or rollback pinned beyond the window?
				if p, ok, err := s.pinned(ctx, want); err != nil || ok {
					return p, err
				}
			}
			return Version{}, s.prunedError(ctx, want, h.Next()-1)
		}
		return v, err
	}
}

// Current returns the current version number (0 = none).
func (s *Store) Current(ctx context.Context) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	h, _, err := s.versions.Head(ctx)
	return h.Current, err
}

// List returns every version, oldest first, and the current number.
func (s *Store) List(ctx context.Context) (_ []Version, _ uint64, err error) {
	defer func() { err = classify(err) }()
	vs, h, err := s.versions.List(ctx)
	return vs, h.Current, err
}

// Compile checks a bundle as the enforcement points will.
func (s *Store) Compile(b policy.Bundle) (*policy.Set, error) {
	set, err := s.schema.CompileBundle(b)
	return set, classify(err)
}

// commit compiles next (built from the current version by f) and stores it
// as a new version, atomically with the head.
func (s *Store) commit(ctx context.Context, op string, fields map[string]string, f func(cur *Version) (Version, error)) (Version, error) {
	if err := s.record(ctx, op, audit.ResultStarted, 0, fields, nil); err != nil {
		return Version{}, fmt.Errorf("audit log unavailable, %s refused: %w", op, err)
	}
	var warnings []policy.Problem
	var pruned int
	var oldest uint64
	var next Version
	var err error
	for try := 0; ; try++ {
		next, err = s.versions.CommitWith(ctx, func(h versioned.Head) (Version, []store.Op, error) {
			return s.build(ctx, h, f, op == "policy.apply" || op == "policy.rollback", &warnings, &pruned, &oldest)
		})
		// The current version read was pruned by other authorities'
		// commits in between: read again (bounded).
		if !errors.Is(err, errCurrentMoved) || try >= 8 {
			break
		}
	}
	if errors.Is(err, errCurrentMoved) {
		err = errs.Errorf(errs.Precondition, "the policy is being changed concurrently by other authorities: retry")
	}
	if err != nil {
		return Version{}, s.fail(ctx, op, fields, err)
	}
	var pruneErr error
	if oldest < s.cut(next.Number) {
		// a backlog longer than one batch holds (see pruneBacklog)
		n, err := s.pruneBacklog(ctx, next.Number)
		pruned, pruneErr = pruned+n, err
	}
	return s.committed(ctx, op, fields, next, warnings, pruned, pruneErr)
}

// errCurrentMoved: the current version a commit read the head for was
// pruned before it could be read.
var errCurrentMoved = errors.New("the current policy version moved while it was read")

// build makes the next version from head h (commit's CommitWith step):
// warnings, pruned and oldest report what it found. operator: an apply or
// a rollback makes it (pinned once pruned, see MaxPinnedVersions).
func (s *Store) build(ctx context.Context, h versioned.Head, f func(cur *Version) (Version, error), operator bool, warnings *[]policy.Problem, pruned *int, oldest *uint64) (Version, []store.Op, error) {
	var guard []store.Op
	*warnings, *pruned = nil, 0
	var cur *Version
	if h.Current != 0 {
		v, err := s.versions.Version(ctx, h.Current)
		if errors.Is(err, store.ErrNotFound) {
			return Version{}, nil, errCurrentMoved
		}
		if err != nil {
			return Version{}, nil, err
		}
		cur = &v
	}
	next, err := f(cur)
	if err != nil {
		return Version{}, nil, err
	}
	next.Number = h.Next()
	next.Bundle.Version = next.Number
	pruneExpired(&next, cur, s.now())
	// Tainted keys are never dropped by a new version (apply, rollback,
	// unrevoke): they only leave with the CA key itself.
	var keep []string
	if cur != nil {
		keep = cur.Bundle.DenyList.TaintedKeys
	}
	if s.tainted != nil {
		keep = append(slices.Clone(keep), s.tainted()...)
	}
	if next.Bundle.DenyList.TaintedKeys, err = mergeKeyIDs(next.Bundle.DenyList.TaintedKeys, keep); err != nil {
		return Version{}, nil, err
	}
	switch {
	case s.remote != nil:
		next.Bundle.RemoteDenyLists = s.remote()
	case cur != nil:
		next.Bundle.RemoteDenyLists = cur.Bundle.RemoteDenyLists
	}
	switch {
	case s.services != nil:
		next.Bundle.Services = s.services()
	case cur != nil:
		next.Bundle.Services = cur.Bundle.Services
	}
	if s.principals != nil {
		if next.Bundle.Principals, err = s.principals(ctx); err != nil {
			return Version{}, nil, fmt.Errorf("reading principal attributes: %w", err)
		}
	}
	next.Created = s.now().UTC()
	set, err := s.Compile(next.Bundle)
	if err != nil {
		return Version{}, nil, err
	}
	next.PolicyCount = set.Len()
	if cur == nil || !maps.EqualFunc(cur.Bundle.Files, next.Bundle.Files, slices.Equal) {
		*warnings = federationWarnings(set)
		if len(*warnings) > 0 {
			// Read on every attempt: a mode raised by another
			// authority while this one built the version counts.
			strict, g, err := s.strictGuard(ctx)
			if err != nil {
				return Version{}, nil, err
			}
			if strict {
				return Version{}, nil, federationRefusal(*warnings)
			}
			// Stored only if the mode is still the one read: a
			// raise by another authority in between (with no
			// policy yet, no head it could rewrite) fails the
			// batch, and the next attempt reads strict.
			guard = g
		}
	}
	// Versions older than the retention are deleted in this batch:
	// the history is never half pruned, and a lost race on the head
	// prunes nothing.
	prune, n, o, err := s.pruneOps(ctx, next.Number, operator, s.st.MaxBatch()-2-len(guard))
	if err != nil {
		return Version{}, nil, err
	}
	*pruned, *oldest = n, o
	return next, append(guard, prune...), nil
}

// committed audits a stored version.
func (s *Store) committed(ctx context.Context, op string, fields map[string]string, next Version, warnings []policy.Problem, pruned int, pruneErr error) (Version, error) {
	f2 := maps.Clone(fields)
	if f2 == nil {
		f2 = map[string]string{}
	}
	f2["policies"] = fmt.Sprint(next.PolicyCount)
	f2["digest"] = next.Digest()
	if pruned > 0 {
		f2["pruned_versions"] = fmt.Sprint(pruned)
		f2["keep_versions"] = fmt.Sprint(s.keep)
	}
	if pruneErr != nil {
		f2["prune_error"] = pruneErr.Error()
	}
	if len(warnings) > 0 {
		f2["federation_warnings"] = fmt.Sprint(len(warnings))
		f2["federation_warning_policies"] = strings.Join(warningPlaces(warnings), "; ")
	}
	if err := s.record(ctx, op, audit.ResultOK, next.Number, f2, nil); err != nil {
		return next, fmt.Errorf("%s stored version %d but its audit event could not be written: %w", op, next.Number, err)
	}
	return next, nil
}

// CurrentFederationWarnings names the permits of the current version that
// do not constrain the caller's trust domain (file:line:column and policy
// id), with that version's number; none with no policy applied. A version
// stored before strict lint was turned on, or restored from a backup, is
// served as it is: the authority reports it at unseal (server) rather than
// refuse to serve it.
func (s *Store) CurrentFederationWarnings(ctx context.Context) (_ uint64, _ []string, err error) {
	defer func() { err = classify(err) }()
	v, err := s.Get(ctx, 0)
	if errors.Is(err, ErrNoPolicy) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	set, err := s.Compile(v.Bundle)
	if err != nil {
		return v.Number, nil, err
	}
	return v.Number, warningPlaces(federationWarnings(set)), nil
}

// federationWarnings are the set's permits that do not constrain the
// caller's trust domain.
func federationWarnings(set *policy.Set) []policy.Problem {
	var out []policy.Problem
	for _, w := range set.Warnings() {
		if w.Kind == policy.KindFederation {
			out = append(out, w)
		}
	}
	return out
}

// warningPlaces names each warned policy: file:line:column and its id.
func warningPlaces(ws []policy.Problem) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		at := w.File
		if w.Line > 0 {
			at = fmt.Sprintf("%s:%d:%d", w.File, w.Line, w.Column)
		}
		if w.Policy != "" {
			at += fmt.Sprintf(" (policy %q)", w.Policy)
		}
		out[i] = at
	}
	return out
}

// federationRefusal is the error of a set refused by the strict lint: it
// names every offending permit and the two fixes.
func federationRefusal(ws []policy.Problem) error {
	return &lintRefusal{fmt.Errorf("policy set refused by the authority (policy.federation_lint: strict), nothing was stored: "+
		"%d permit(s) do not constrain the caller's trust domain, so workloads of federated trust domains with the same path or labels "+
		"would match them too: %s; fix each one by adding `principal in TrustDomain::\"<your trust domain>\"` to its scope "+
		"(or `when { principal.trust_domain == \"<your trust domain>\" }`), or annotate it @federated(\"allow\") if it is meant to admit "+
		"federated workloads (`ward policy lint --strict FILE...` shows the same offline)", len(ws), strings.Join(warningPlaces(ws), "; "))}
}

// lintRefusal is a set the strict federation lint refused: Invalid, as a
// compile error is.
type lintRefusal struct{ error }

func (e *lintRefusal) Unwrap() error { return e.error }

// record audits a policy change: result, the version it made (0: none),
// fields and, for a failure, its error.
func (s *Store) record(ctx context.Context, op, result string, version uint64, fields map[string]string, opErr error) error {
	ev := audit.NewEvent(ctx, op, result)
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	ev.Fields = maps.Clone(fields)
	if version != 0 {
		if ev.Fields == nil {
			ev.Fields = map[string]string{}
		}
		ev.Fields["policy_version"] = fmt.Sprint(version)
	}
	return s.audit.Record(ctx, ev)
}

func (s *Store) fail(ctx context.Context, op string, fields map[string]string, err error) error {
	_ = s.record(ctx, op, audit.ResultError, 0, fields, err)
	return err
}

// classify gives err the kind the policy API has always answered with: a
// compile error is Invalid, a missing version (or no policy yet) NotFound,
// and anything else (bad input, storage, the audit log, a lost race)
// Precondition. Errors that carry a gRPC status (a failed stream send)
// keep it. Every exported method returns its error through classify.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ce *policy.CompileError
	var lr *lintRefusal
	k := errs.Precondition
	switch {
	case errors.As(err, &ce), errors.As(err, &lr):
		k = errs.Invalid
	case errors.Is(err, ErrNoPolicy), errors.Is(err, ErrNotFound):
		k = errs.NotFound
	}
	if errs.KindOf(err) == k {
		return err
	}
	return errs.Wrap(k, err, "")
}

// Apply stores files as the new policy set, keeping the current deny-list.
func (s *Store) Apply(ctx context.Context, actor string, files map[string][]byte, comment string) (_ Version, err error) {
	defer func() { err = classify(err) }()
	if len(files) == 0 {
		return Version{}, errors.New("no policy files given: pass at least one .cedar file")
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	fields := map[string]string{"files": fmt.Sprint(names)}
	return s.commit(ctx, "policy.apply", fields, func(cur *Version) (Version, error) {
		v := Version{Actor: actor, Comment: comment, Bundle: policy.Bundle{Files: files}}
		if cur != nil {
			v.Bundle.DenyList = cur.Bundle.DenyList
		}
		return v, nil
	})
}

// Check runs Apply's checks on files (compilation; with
// WithStrictFederationLint or the cluster's stored strict mode, the
// refusal of permits open to federated trust domains) and stores nothing. It returns the number of policies and the
// federation warnings (file:line:column and policy id).
func (s *Store) Check(ctx context.Context, files map[string][]byte) (_ int, _ []string, err error) {
	defer func() { err = classify(err) }()
	if len(files) == 0 {
		return 0, nil, errors.New("no policy files given: pass at least one .cedar file")
	}
	set, err := s.Compile(policy.Bundle{Files: files})
	if err != nil {
		return 0, nil, err
	}
	ws := federationWarnings(set)
	if len(ws) > 0 {
		strict, err := s.strict(ctx)
		if err != nil {
			return 0, nil, err
		}
		if strict {
			return 0, nil, federationRefusal(ws)
		}
	}
	return set.Len(), warningPlaces(ws), nil
}

// Rollback stores a new version with the policies of version n; the
// current deny-list is kept, so a rollback never un-revokes anyone.
func (s *Store) Rollback(ctx context.Context, actor string, n uint64, comment string) (_ Version, err error) {
	defer func() { err = classify(err) }()
	old, err := s.Get(ctx, n)
	if err != nil {
		return Version{}, err
	}
	return s.commit(ctx, "policy.rollback", map[string]string{"restored_from": fmt.Sprint(n)}, func(cur *Version) (Version, error) {
		v := Version{Actor: actor, Comment: comment, RestoredFrom: n, Bundle: policy.Bundle{Files: old.Bundle.Files}}
		if cur != nil {
			v.Bundle.DenyList = cur.Bundle.DenyList
		}
		return v, nil
	})
}

// Revoke adds (or, with remove, removes) SPIFFE IDs and certificate serials
// to the deny-list as a new version.
func (s *Store) Revoke(ctx context.Context, actor string, ids, serials []string, remove bool, comment string) (_ Version, err error) {
	defer func() { err = classify(err) }()
	if len(ids)+len(serials) == 0 {
		return Version{}, errors.New("nothing to revoke: give --spiffe-id or --serial")
	}
	norm := make([]string, 0, len(serials))
	for _, sr := range serials {
		n, err := policy.NormalizeSerial(sr)
		if err != nil {
			return Version{}, fmt.Errorf("serial %q: %w", sr, err)
		}
		norm = append(norm, n)
	}
	op := "policy.revoke"
	if remove {
		op = "policy.unrevoke"
	}
	fields := map[string]string{"spiffe_ids": fmt.Sprint(ids), "serials": fmt.Sprint(norm)}
	return s.commit(ctx, op, fields, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, errors.New("no policy applied yet: apply a policy set first (with no policy everything is denied anyway)")
		}
		if !remove && s.td != "" {
			for _, id := range ids {
				if td := idTrustDomain(id); td != s.td {
					return Version{}, errs.Errorf(errs.Invalid, "%s is an identity of trust domain %q, not of this authority's %s: "+
						"a trust domain can only revoke its own identities (revoke it in %s's authority, whose revocations reach this one "+
						"over federation; or refuse it here with a forbid policy)", id, td, s.td, td)
				}
			}
		}
		d := cur.Bundle.DenyList
		if remove {
			d.SPIFFEIDs = slices.DeleteFunc(slices.Clone(d.SPIFFEIDs), func(x string) bool { return slices.Contains(ids, x) })
			d.Serials = slices.DeleteFunc(slices.Clone(d.Serials), func(x string) bool { return slices.Contains(norm, x) })
		} else {
			d.SPIFFEIDs = appendNew(slices.Clone(d.SPIFFEIDs), ids)
			d.Serials = appendNew(slices.Clone(d.Serials), norm)
		}
		// Revoked by hand: for good, even if an eviction had revoked it
		// until its NotAfter (non-nil: this version's, see pruneExpired).
		na := maps.Clone(cur.SerialsNotAfter)
		if na == nil {
			na = map[string]time.Time{}
		}
		if !remove {
			for _, n := range norm {
				delete(na, n)
			}
		}
		return Version{Actor: actor, Comment: comment, Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: d}, SerialsNotAfter: na}, nil
	})
}

// Expiring is a certificate serial (hex) revoked until its NotAfter.
type Expiring struct {
	Serial   string
	NotAfter time.Time
}

// RevokeExpiring adds serials to the deny-list as a new version, each
// kept only until its certificate's NotAfter (dropped by the first new
// version after it): `ward agent evict` revokes the SVIDs signed through
// the agent with it. Audited as policy.revoke. With no policy applied
// yet it returns ErrNoPolicy (everything is refused then).
func (s *Store) RevokeExpiring(ctx context.Context, actor string, serials []Expiring, comment string) (_ Version, err error) {
	defer func() { err = classify(err) }()
	if len(serials) == 0 {
		return Version{}, errors.New("no serials to revoke")
	}
	norm := make([]string, len(serials))
	for i, sr := range serials {
		if norm[i], err = policy.NormalizeSerial(sr.Serial); err != nil {
			return Version{}, fmt.Errorf("serial %q: %w", sr.Serial, err)
		}
	}
	fields := map[string]string{"serials": fmt.Sprint(norm), "until_not_after": "true"}
	return s.commit(ctx, "policy.revoke", fields, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, ErrNoPolicy
		}
		d := cur.Bundle.DenyList
		had := slices.Clone(d.Serials)
		d.Serials = appendNew(slices.Clone(d.Serials), norm)
		na := make(map[string]time.Time, len(cur.SerialsNotAfter)+len(norm))
		maps.Copy(na, cur.SerialsNotAfter)
		for i, n := range norm {
			// A serial already revoked for good (`ward revoke --serial`)
			// stays so; one already expiring keeps the later NotAfter.
			if slices.Contains(had, n) && na[n].IsZero() {
				continue
			}
			if t := serials[i].NotAfter.UTC(); t.After(na[n]) {
				na[n] = t
			}
		}
		return Version{Actor: actor, Comment: comment, Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: d}, SerialsNotAfter: na}, nil
	})
}

// PruneSkew is how long past its NotAfter a serial revoked until then
// stays on the deny-list: the clock of the authority writing a version may
// run ahead of a proxy's, which would still take the certificate as
// current for that long once the serial was dropped.
const PruneSkew = 5 * time.Minute

// pruneExpired drops from v's deny-list the serials whose NotAfter
// (SerialsNotAfter) has passed by PruneSkew: their certificates are refused
// as expired anyway. A version that sets no SerialsNotAfter (nil) keeps
// cur's.
func pruneExpired(v, cur *Version, now time.Time) {
	now = now.Add(-PruneSkew)
	all := v.SerialsNotAfter
	if all == nil && cur != nil {
		all = cur.SerialsNotAfter
	}
	d := &v.Bundle.DenyList
	na := make(map[string]time.Time, len(all))
	for sr, t := range all {
		if t.After(now) && slices.Contains(d.Serials, sr) {
			na[sr] = t
		}
	}
	if len(all) > 0 {
		d.Serials = slices.DeleteFunc(slices.Clone(d.Serials), func(sr string) bool {
			t, ok := all[sr]
			return ok && !t.After(now)
		})
		if len(d.Serials) == 0 {
			d.Serials = nil
		}
	}
	v.SerialsNotAfter = na
	if len(na) == 0 {
		v.SerialsNotAfter = nil
	}
}

// TaintKeys adds CA key IDs (tainted in the CA) to the deny-list as a new
// version, so every proxy refuses chains through them. Keys already listed
// make no new version: the current one is returned. With no policy applied
// yet it returns ErrNoPolicy and stores nothing (everything is denied
// then; the first version applied carries the CA's tainted keys, see
// WithTaintedKeys).
func (s *Store) TaintKeys(ctx context.Context, actor string, keyIDs []string, comment string) (_ Version, err error) {
	defer func() { err = classify(err) }()
	norm, err := mergeKeyIDs(nil, keyIDs)
	if err != nil {
		return Version{}, err
	}
	if len(norm) == 0 {
		return Version{}, errors.New("no CA key IDs given to taint: see `ward ca show`")
	}
	cur, err := s.Current(ctx)
	if err != nil {
		return Version{}, err
	}
	if cur == 0 {
		return Version{}, ErrNoPolicy
	}
	v, err := s.Get(ctx, cur)
	if err != nil {
		return Version{}, err
	}
	if have, _ := mergeKeyIDs(nil, v.Bundle.DenyList.TaintedKeys); len(have) > 0 {
		missing := false
		for _, k := range norm {
			if !slices.Contains(have, k) {
				missing = true
				break
			}
		}
		if !missing {
			return v, nil
		}
	}
	return s.commit(ctx, "policy.taint", map[string]string{"tainted_keys": fmt.Sprint(norm)}, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, ErrNoPolicy
		}
		d := cur.Bundle.DenyList
		d.TaintedKeys = appendNew(slices.Clone(d.TaintedKeys), norm)
		return Version{Actor: actor, Comment: comment, Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: d}}, nil
	})
}

// mergeKeyIDs returns the normalized, sorted union of a and b.
func mergeKeyIDs(a, b []string) ([]string, error) {
	var out []string
	for _, k := range append(slices.Clone(a), b...) {
		n, err := policy.NormalizeKeyID(k)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

func appendNew(dst, add []string) []string {
	for _, a := range add {
		if !slices.Contains(dst, a) {
			dst = append(dst, a)
		}
	}
	sort.Strings(dst)
	return dst
}

// idTrustDomain returns the trust domain of a SPIFFE ID ("" if it is none).
func idTrustDomain(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	return td
}

// RefreshRemote stores a new version with the current policies and
// deny-list when the remote deny-lists (WithRemoteDenyLists) differ from
// the current version's; otherwise, or with no policy applied yet (the
// first version carries them), it does nothing and returns 0.
func (s *Store) RefreshRemote(ctx context.Context, actor string, fields map[string]string) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	if s.remote == nil {
		return 0, nil
	}
	cur, err := s.Current(ctx)
	if err != nil || cur == 0 {
		return 0, err
	}
	v, err := s.Get(ctx, cur)
	if err != nil {
		return 0, err
	}
	if sameRemote(v.Bundle.RemoteDenyLists, s.remote()) {
		return 0, nil
	}
	next, err := s.commit(ctx, "policy.remote_deny_list", fields, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, ErrNoPolicy
		}
		return Version{Actor: actor, Comment: "remote deny-lists changed", Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: cur.Bundle.DenyList}}, nil
	})
	return next.Number, err
}

// RefreshServices stores a new version with the current policies and
// deny-list when the services catalog (WithServices) differs from the
// current version's; otherwise, or with no policy applied yet (the first
// version carries it), it does nothing and returns 0.
func (s *Store) RefreshServices(ctx context.Context, actor string, fields map[string]string) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	if s.services == nil {
		return 0, nil
	}
	cur, err := s.Current(ctx)
	if err != nil || cur == 0 {
		return 0, err
	}
	v, err := s.Get(ctx, cur)
	if err != nil {
		return 0, err
	}
	if sameServices(v.Bundle.Services, s.services()) {
		return 0, nil
	}
	next, err := s.commit(ctx, "policy.services", fields, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, ErrNoPolicy
		}
		return Version{Actor: actor, Comment: "services catalog changed", Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: cur.Bundle.DenyList}}, nil
	})
	return next.Number, err
}

func sameServices(a, b map[string][]catalog.Service) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		y, ok := b[td]
		if !ok || !catalog.Equal(x, y) {
			return false
		}
	}
	return true
}

func sameRemote(a, b map[string]policy.DenyList) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		y, ok := b[td]
		if !ok || !slices.Equal(x.SPIFFEIDs, y.SPIFFEIDs) || !slices.Equal(x.Serials, y.Serials) || !slices.Equal(x.TaintedKeys, y.TaintedKeys) {
			return false
		}
	}
	return true
}

// RefreshPrincipals stores a new version with the current policies and
// deny-list when the principals' attributes changed since the current
// version (after an entry's labels changed); otherwise it does nothing and
// returns 0.
func (s *Store) RefreshPrincipals(ctx context.Context, actor string) (_ uint64, err error) {
	defer func() { err = classify(err) }()
	if s.principals == nil {
		return 0, nil
	}
	cur, err := s.Current(ctx)
	if err != nil || cur == 0 {
		return 0, err
	}
	v, err := s.Get(ctx, cur)
	if err != nil {
		return 0, err
	}
	now, err := s.principals(ctx)
	if err != nil {
		return 0, err
	}
	if samePrincipals(v.Bundle.Principals, now) {
		return 0, nil
	}
	next, err := s.commit(ctx, "policy.principals", map[string]string{"principals": fmt.Sprint(len(now))}, func(cur *Version) (Version, error) {
		if cur == nil {
			return Version{}, ErrNoPolicy
		}
		return Version{Actor: actor, Comment: "principal attributes changed", Bundle: policy.Bundle{Files: cur.Bundle.Files, DenyList: cur.Bundle.DenyList}}, nil
	})
	return next.Number, err
}

func samePrincipals(a, b map[string]policy.Principal) bool {
	if len(a) != len(b) {
		return false
	}
	for id, pa := range a {
		pb, ok := b[id]
		if !ok || len(pa.Labels) != len(pb.Labels) || !slices.Equal(pa.Groups, pb.Groups) {
			return false
		}
		for k, v := range pa.Labels {
			if w, ok := pb.Labels[k]; !ok || w != v {
				return false
			}
		}
	}
	return true
}

// Watch sends the current version (if newer than known) and every later
// one until ctx ends. A watch interrupted by the backend is restarted.
func (s *Store) Watch(ctx context.Context, known uint64, send func(Version) error) (err error) {
	defer func() { err = classify(err) }()
	for ctx.Err() == nil {
		ch, err := s.st.Watch(ctx, s.versions.HeadKey())
		if err != nil {
			return err
		}
		// Read after subscribing, so no change is lost in between. The
		// current version is read as one (Get 0): a number read first may
		// be pruned by the time its version is.
		if cur, err := s.Current(ctx); err == nil && cur > known {
			v, err := s.Get(ctx, 0)
			if err != nil {
				return err
			}
			if v.Number > known {
				if err := send(v); err != nil {
					return err
				}
				known = v.Number
			}
		}
		for range ch {
			cur, err := s.Current(ctx)
			if err != nil || cur <= known {
				continue
			}
			v, err := s.Get(ctx, 0)
			if err != nil {
				return err
			}
			if v.Number <= known {
				continue
			}
			if err := send(v); err != nil {
				return err
			}
			known = v.Number
		}
	}
	return ctx.Err()
}
