// Package ca is ward's SPIFFE certificate authority for one trust domain: it
// keeps a root key and rotating intermediate and JWT signing keys in a
// store.Store (prepared → active → retired, or tainted), publishes the
// SPIFFE trust bundle, and signs X509-SVIDs and JWT-SVIDs.
//
// Roots are the X.509 authorities of the bundle; the active intermediate
// signs X509-SVIDs and is sent in each SVID's chain. A root or JWT key enters
// the bundle when prepared, at least Config.PrepareAhead before it signs, and
// leaves it only once everything it (or its intermediates) signed has expired
// — or at once when tainted; a tainted intermediate is revoked by a CRL from
// its root (CRLs). State lives in one store value replaced with
// compare-and-swap, so several authorities can share a store: one write
// wins, the others reload and re-decide.
package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// KeyType selects the CA key algorithm.
type KeyType string

const (
	// KeyTypeP256 is ECDSA P-256 (the default; ES256 for JWTs).
	KeyTypeP256 KeyType = "ec-p256"
	// KeyTypeP384 is ECDSA P-384 (ES384 for JWTs).
	KeyTypeP384 KeyType = "ec-p384"
)

// Errors callers may test with errors.Is.
var (
	// ErrNotInitialized: Init has not run for this trust domain.
	ErrNotInitialized = errs.New(errs.Precondition, "the CA is not initialized; run `ward operator init` (CA.Init) first")
	// ErrUnknownKey: no CA key has the given ID.
	ErrUnknownKey = errs.New(errs.NotFound, "unknown CA key ID")
	// ErrInvalidRequest: a signing request was malformed; nothing was signed.
	ErrInvalidRequest = errs.New(errs.Invalid, "invalid signing request")
)

// Config configures the CA. Zero durations take the defaults documented on
// each field.
type Config struct {
	// TrustDomain is the one trust domain this CA serves. Required.
	TrustDomain spiffeid.TrustDomain
	// KeyType of root, intermediate and JWT keys (default KeyTypeP256).
	KeyType KeyType
	// SVIDTTL is the default X509-SVID lifetime (default 1h).
	SVIDTTL time.Duration
	// MaxSVIDTTL caps any requested X509-SVID TTL (default 24h, at least SVIDTTL).
	MaxSVIDTTL time.Duration
	// JWTSVIDTTL is the default JWT-SVID lifetime (default 5m).
	JWTSVIDTTL time.Duration
	// MaxJWTSVIDTTL caps any requested JWT-SVID TTL (default 1h).
	MaxJWTSVIDTTL time.Duration
	// IntermediateTTL is the lifetime of each intermediate CA (default 7 days;
	// at least 2×MaxSVIDTTL).
	IntermediateTTL time.Duration
	// JWTKeyTTL is the lifetime of each JWT signing key (default IntermediateTTL).
	JWTKeyTTL time.Duration
	// RootTTL is the lifetime of each root (default 10 years; at least
	// 2×IntermediateTTL).
	RootTTL time.Duration
	// RefreshHint is published in the bundle (default 5m).
	RefreshHint time.Duration
	// PrepareAhead is how long a new root or JWT key sits in the bundle
	// before it signs (default 6×RefreshHint; at least RefreshHint). SPIFFE
	// guidance is 3–5 refresh hints.
	PrepareAhead time.Duration
	// Backdate is subtracted from NotBefore to tolerate clock skew (default 10s).
	Backdate time.Duration
}

func (c *Config) setDefaults() error {
	if c.TrustDomain.IsZero() {
		return errors.New("trust_domain is required (e.g. prod-eu.example.org)")
	}
	if c.KeyType == "" {
		c.KeyType = KeyTypeP256
	}
	if c.KeyType != KeyTypeP256 && c.KeyType != KeyTypeP384 {
		return fmt.Errorf("key type %q not supported; use %q or %q", c.KeyType, KeyTypeP256, KeyTypeP384)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.SVIDTTL, time.Hour)
	def(&c.MaxSVIDTTL, 24*time.Hour)
	if c.MaxSVIDTTL < c.SVIDTTL {
		c.MaxSVIDTTL = c.SVIDTTL
	}
	def(&c.JWTSVIDTTL, 5*time.Minute)
	def(&c.MaxJWTSVIDTTL, time.Hour)
	if c.MaxJWTSVIDTTL < c.JWTSVIDTTL {
		c.MaxJWTSVIDTTL = c.JWTSVIDTTL
	}
	def(&c.IntermediateTTL, 7*24*time.Hour)
	def(&c.JWTKeyTTL, c.IntermediateTTL)
	def(&c.RootTTL, 10*365*24*time.Hour)
	def(&c.RefreshHint, 5*time.Minute)
	def(&c.PrepareAhead, 6*c.RefreshHint)
	def(&c.Backdate, 10*time.Second)
	for name, d := range map[string]time.Duration{
		"svid_ttl": c.SVIDTTL, "jwt_svid_ttl": c.JWTSVIDTTL, "intermediate_ttl": c.IntermediateTTL,
		"jwt_key_ttl": c.JWTKeyTTL, "root_ttl": c.RootTTL, "refresh_hint": c.RefreshHint,
		"prepare_ahead": c.PrepareAhead, "backdate": c.Backdate,
	} {
		if d < 0 {
			return fmt.Errorf("%s is negative (%s); use a positive duration", name, d)
		}
	}
	switch {
	case c.IntermediateTTL < 2*c.MaxSVIDTTL:
		return fmt.Errorf("intermediate_ttl %s must be at least twice max_svid_ttl %s", c.IntermediateTTL, c.MaxSVIDTTL)
	case c.JWTKeyTTL < 2*c.MaxJWTSVIDTTL:
		return fmt.Errorf("jwt_key_ttl %s must be at least twice max_jwt_svid_ttl %s", c.JWTKeyTTL, c.MaxJWTSVIDTTL)
	case c.RootTTL < 2*c.IntermediateTTL:
		return fmt.Errorf("root_ttl %s must be at least twice intermediate_ttl %s", c.RootTTL, c.IntermediateTTL)
	case c.PrepareAhead < c.RefreshHint:
		return fmt.Errorf("prepare_ahead %s must be at least refresh_hint %s (3–5 hints recommended)", c.PrepareAhead, c.RefreshHint)
	case c.PrepareAhead*3 > min(c.IntermediateTTL, c.JWTKeyTTL):
		return fmt.Errorf("prepare_ahead %s is too long for intermediate_ttl/jwt_key_ttl; keep it under a third of them", c.PrepareAhead)
	}
	return nil
}

// Clock returns the current time. nil means time.Now.
type Clock func() time.Time

// CA is a certificate authority for one trust domain. Its methods are safe
// for concurrent use; signing never writes to the store.
type CA struct {
	st    store.Store
	cfg   Config
	clock Clock
	key   string

	mu      sync.Mutex // serializes local mutations and view swaps
	view    atomic.Pointer[view]
	updated chan struct{}

	x509Signed atomic.Uint64 // X509-SVIDs signed (SignedX509SVIDs)
	jwtSigned  atomic.Uint64 // JWT-SVIDs signed (SignedJWTSVIDs)
}

// view is an immutable snapshot of the loaded state.
type view struct {
	rev    int64
	state  *persisted // nil when not initialized
	inter  *keyRecord // active intermediate
	jwt    *keyRecord // active JWT key
	bundle *spiffebundle.Bundle
	roots  []*x509.Certificate // bundle's X.509 authorities (X509Authorities)
	crls   [][]byte
}

// Open loads the CA state of cfg.TrustDomain from st (it need not exist yet:
// call Init). clock may be nil.
func Open(ctx context.Context, st store.Store, cfg Config, clock Clock) (*CA, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = time.Now
	}
	c := &CA{st: st, cfg: cfg, clock: clock, key: "ca/" + cfg.TrustDomain.Name() + "/state", updated: make(chan struct{})}
	c.view.Store(&view{})
	if err := c.Reload(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Config returns the effective configuration (defaults filled in).
func (c *CA) Config() Config { return c.cfg }

// Updated returns a channel that is closed at the next change of the loaded
// state (a local mutation or a Reload that saw another writer's change).
func (c *CA) Updated() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.updated
}

// Reload re-reads the state from the store if another writer changed it.
func (c *CA) Reload(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloadLocked(ctx)
}

func (c *CA) reloadLocked(ctx context.Context) error {
	kv, err := c.st.Get(ctx, c.key)
	if errors.Is(err, store.ErrNotFound) {
		if c.view.Load().state != nil {
			return fmt.Errorf("state of trust domain %q vanished from the store; restore it from backup", c.cfg.TrustDomain)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("load state of trust domain %q: %w", c.cfg.TrustDomain, err)
	}
	if kv.Revision == c.view.Load().rev {
		return nil
	}
	s, err := decodeState(kv.Value)
	if err != nil {
		return fmt.Errorf("trust domain %q: %w", c.cfg.TrustDomain, err)
	}
	if s.TrustDomain != c.cfg.TrustDomain.Name() {
		return fmt.Errorf("stored state is for trust domain %q, configured %q", s.TrustDomain, c.cfg.TrustDomain)
	}
	return c.installLocked(s, kv.Revision)
}

func (c *CA) installLocked(s *persisted, rev int64) error {
	v := &view{rev: rev, state: s}
	if k := s.one(KindIntermediate, StateActive, ""); k != nil {
		v.inter = k
	}
	v.jwt = s.one(KindJWT, StateActive, "")
	b := spiffebundle.New(c.cfg.TrustDomain)
	for _, k := range s.Keys {
		if !k.inBundle() {
			continue
		}
		switch k.Kind {
		case KindRoot:
			b.AddX509Authority(k.cert)
		case KindJWT:
			if err := b.AddJWTAuthority(k.ID, k.signer.Public()); err != nil {
				return fmt.Errorf("add JWT authority %s to bundle: %w", k.ID, err)
			}
		}
	}
	b.SetRefreshHint(c.cfg.RefreshHint)
	b.SetSequenceNumber(s.Sequence)
	v.bundle, v.roots = b, b.X509Authorities()
	crls, err := buildCRLs(s, rev)
	if err != nil {
		return err
	}
	v.crls = crls
	c.view.Store(v)
	close(c.updated)
	c.updated = make(chan struct{})
	return nil
}

// mutate applies fn to a copy of the state and writes it with
// compare-and-swap. On conflict it reloads and re-runs fn on the fresh state,
// so fn must decide from the state it is given. fn returns false when there is
// nothing to write.
func (c *CA) mutate(ctx context.Context, op string, fn func(s *persisted, now time.Time) (bool, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		cur := c.view.Load()
		var s *persisted
		if cur.state != nil {
			s = cur.state.clone()
		}
		now := c.clock()
		if s == nil {
			s = &persisted{Version: stateVersion, TrustDomain: c.cfg.TrustDomain.Name()}
		}
		before := s.bundleSet()
		changed, err := fn(s, now)
		if err != nil {
			return err
		}
		if !changed {
			return nil
		}
		if s.bundleSet() != before {
			s.Sequence++
		}
		b, err := json.Marshal(s)
		if err != nil {
			return fmt.Errorf("%s: encode state: %w", op, err)
		}
		rev, err := c.st.CompareAndSwap(ctx, c.key, b, cur.rev)
		if errors.Is(err, store.ErrConflict) && attempt < 8 {
			if err := c.reloadLocked(ctx); err != nil {
				return fmt.Errorf("%s: reload after conflict: %w", op, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%s for trust domain %q: write state: %w", op, c.cfg.TrustDomain, err)
		}
		return c.installLocked(s, rev)
	}
}

// Init creates the root, an active intermediate and an active JWT key. It
// is a no-op when the CA is already initialized (by this or another
// authority sharing the store).
func (c *CA) Init(ctx context.Context) error {
	return c.mutate(ctx, "init", func(s *persisted, now time.Time) (bool, error) {
		if len(s.Keys) > 0 {
			return false, nil
		}
		root, err := c.newRoot(now)
		if err != nil {
			return false, err
		}
		c.activate(root, now)
		inter, err := c.newIntermediate(root, now)
		if err != nil {
			return false, err
		}
		c.activate(inter, now)
		jk, err := c.newJWTKey(now)
		if err != nil {
			return false, err
		}
		c.activate(jk, now)
		s.Keys = append(s.Keys, root, inter, jk)
		return true, nil
	})
}

// Initialized reports whether the CA has keys.
func (c *CA) Initialized() bool { return c.view.Load().state != nil }

// Rotate prepares (or takes the already prepared) intermediate and JWT key
// and activates them now; the previous ones retire.
func (c *CA) Rotate(ctx context.Context) error {
	return c.mutate(ctx, "rotate", func(s *persisted, now time.Time) (bool, error) {
		if len(s.Keys) == 0 {
			return false, ErrNotInitialized
		}
		if err := c.rotateIntermediate(s, now); err != nil {
			return false, err
		}
		return true, c.rotateJWT(s, now)
	})
}

// PrepareRoot creates a new root and publishes it in the bundle without
// using it yet (no-op if one is already prepared). Tick activates it once it
// has been published for PrepareAhead; RotateRoot activates it at once.
func (c *CA) PrepareRoot(ctx context.Context) error {
	return c.mutate(ctx, "prepare root", func(s *persisted, now time.Time) (bool, error) {
		if len(s.Keys) == 0 {
			return false, ErrNotInitialized
		}
		if s.one(KindRoot, StatePrepared, "") != nil {
			return false, nil
		}
		r, err := c.newRoot(now)
		if err != nil {
			return false, err
		}
		s.Keys = append(s.Keys, r)
		return true, nil
	})
}

// RotateRoot activates the prepared root (creating one if none is prepared)
// with a fresh intermediate under it; the old root and its intermediates
// retire. Prefer PrepareRoot, then RotateRoot after several refresh hints, so
// every peer has the new root before the first SVID chains to it.
func (c *CA) RotateRoot(ctx context.Context) error {
	return c.mutate(ctx, "rotate root", func(s *persisted, now time.Time) (bool, error) {
		if len(s.Keys) == 0 {
			return false, ErrNotInitialized
		}
		return true, c.activateRoot(s, now)
	})
}

// Taint marks a key compromised: it stops signing, a root or JWT key leaves
// the bundle at once (a root takes its intermediates with it), and an active
// key is replaced immediately. SVIDs chained to the key must be re-issued;
// State lists tainted keys so agents can find them.
func (c *CA) Taint(ctx context.Context, keyID string) error {
	return c.mutate(ctx, "taint", func(s *persisted, now time.Time) (bool, error) {
		k := s.find(keyID)
		if k == nil {
			return false, fmt.Errorf("%w %q in trust domain %q; see `ward ca show`", ErrUnknownKey, keyID, c.cfg.TrustDomain)
		}
		if k.State == StateTainted {
			return false, nil
		}
		wasActive := k.State == StateActive
		taint(k, now)
		switch k.Kind {
		case KindRoot:
			for _, i := range s.Keys {
				if i.Kind == KindIntermediate && i.Parent == k.ID && i.State != StateTainted {
					taint(i, now)
				}
			}
			if wasActive {
				return true, c.activateRoot(s, now)
			}
		case KindIntermediate:
			if wasActive {
				return true, c.rotateIntermediate(s, now)
			}
		case KindJWT:
			if wasActive {
				return true, c.rotateJWT(s, now)
			}
		}
		return true, nil
	})
}

func taint(k *keyRecord, now time.Time) {
	k.State = StateTainted
	k.TaintedAt = now
	k.DropAfter = time.Time{}
}

// Tick runs the rotation schedule at time now: it reloads changes made by
// other authorities, prepares successors ahead of time, activates them,
// retires their predecessors and drops keys whose signed material has all
// expired. Call it periodically (every RefreshHint or more often).
func (c *CA) Tick(ctx context.Context, now time.Time) error {
	if err := c.Reload(ctx); err != nil {
		return err
	}
	if !c.Initialized() {
		return nil
	}
	return c.mutate(ctx, "scheduled rotation", func(s *persisted, _ time.Time) (bool, error) {
		return c.schedule(s, now)
	})
}

// --- key creation and lifecycle ---

func (c *CA) activate(k *keyRecord, now time.Time) {
	k.State = StateActive
	k.ActivatedAt = now
}

// retire stops k from signing. It stays (and, for JWT keys, stays
// published) until the last thing it can have signed has expired: maxTTL
// after now, plus margin for authorities sharing the store that have not
// reloaded yet; never past its own expiry, which bounds everything it signed.
func retire(k *keyRecord, now time.Time, maxTTL, margin time.Duration) {
	k.State = StateRetired
	k.RetiredAt = now
	k.DropAfter = minTime(k.NotAfter, now.Add(maxTTL+margin))
}

func (c *CA) rotateIntermediate(s *persisted, now time.Time) error {
	root := s.one(KindRoot, StateActive, "")
	if root == nil {
		return fmt.Errorf("trust domain %q has no active root; run RotateRoot", c.cfg.TrustDomain)
	}
	next := s.one(KindIntermediate, StatePrepared, root.ID)
	if next == nil {
		n, err := c.newIntermediate(root, now)
		if err != nil {
			return err
		}
		s.Keys = append(s.Keys, n)
		next = n
	}
	if old := s.one(KindIntermediate, StateActive, ""); old != nil {
		retire(old, now, c.cfg.MaxSVIDTTL, c.cfg.PrepareAhead)
	}
	c.activate(next, now)
	return nil
}

func (c *CA) rotateJWT(s *persisted, now time.Time) error {
	next := s.one(KindJWT, StatePrepared, "")
	if next == nil {
		n, err := c.newJWTKey(now)
		if err != nil {
			return err
		}
		s.Keys = append(s.Keys, n)
		next = n
	}
	if old := s.one(KindJWT, StateActive, ""); old != nil {
		retire(old, now, c.cfg.MaxJWTSVIDTTL, c.cfg.PrepareAhead)
	}
	c.activate(next, now)
	return nil
}

// activateRoot makes the prepared root (or a new one) active, retires the old
// root and its intermediates, and activates a fresh intermediate under the
// new root.
func (c *CA) activateRoot(s *persisted, now time.Time) error {
	next := s.one(KindRoot, StatePrepared, "")
	if next == nil {
		n, err := c.newRoot(now)
		if err != nil {
			return err
		}
		s.Keys = append(s.Keys, n)
		next = n
	}
	if old := s.one(KindRoot, StateActive, ""); old != nil {
		old.State = StateRetired
		old.RetiredAt = now
		// Prepared intermediates of the old root never signed: drop them.
		s.remove(func(k *keyRecord) bool {
			return k.Kind == KindIntermediate && k.Parent == old.ID && k.State == StatePrepared
		})
	}
	c.activate(next, now)
	return c.rotateIntermediate(s, now)
}

// schedule applies the rotation plan at now; it reports whether s changed.
func (c *CA) schedule(s *persisted, now time.Time) (bool, error) {
	changed := false
	// Drop what can no longer verify anything live.
	n := len(s.Keys)
	s.remove(func(k *keyRecord) bool {
		if k.Kind == KindRoot {
			return false
		}
		switch k.State {
		case StateRetired:
			return !now.Before(k.DropAfter)
		case StatePrepared, StateTainted:
			return !now.Before(k.NotAfter)
		}
		return false
	})
	s.remove(func(k *keyRecord) bool {
		if k.Kind != KindRoot || (k.State != StateRetired && k.State != StateTainted) {
			return false
		}
		for _, i := range s.Keys {
			if i.Kind == KindIntermediate && i.Parent == k.ID {
				return false
			}
		}
		return true
	})
	changed = changed || len(s.Keys) != n

	// Roots.
	root := s.one(KindRoot, StateActive, "")
	if root == nil || !now.Before(root.NotAfter) {
		if err := c.activateRoot(s, now); err != nil {
			return false, err
		}
		changed = true
	} else {
		activateAt := root.NotAfter.Add(-max(lifetime(root)/6, c.cfg.IntermediateTTL))
		prep := s.one(KindRoot, StatePrepared, "")
		if prep == nil && !now.Before(activateAt.Add(-c.cfg.PrepareAhead)) {
			r, err := c.newRoot(now)
			if err != nil {
				return false, err
			}
			s.Keys = append(s.Keys, r)
			changed = true
		} else if prep != nil && !now.Before(activateAt) && !now.Before(prep.CreatedAt.Add(c.cfg.PrepareAhead)) {
			if err := c.activateRoot(s, now); err != nil {
				return false, err
			}
			changed = true
		}
	}

	// Intermediates (not published, so no publication delay).
	root = s.one(KindRoot, StateActive, "")
	inter := s.one(KindIntermediate, StateActive, "")
	if inter == nil || !now.Before(inter.NotAfter) {
		if err := c.rotateIntermediate(s, now); err != nil {
			return false, err
		}
		changed = true
	} else {
		activateAt := inter.NotAfter.Add(-max(lifetime(inter)/6, c.cfg.MaxSVIDTTL))
		prep := s.one(KindIntermediate, StatePrepared, root.ID)
		// A successor capped by the root's expiry would live no longer than
		// the active one: wait for the root rotation instead of churning.
		gain := minTime(now.Add(c.cfg.IntermediateTTL), root.NotAfter).Truncate(time.Second).After(inter.NotAfter)
		if prep == nil && gain && !now.Before(activateAt.Add(-c.cfg.PrepareAhead)) {
			n, err := c.newIntermediate(root, now)
			if err != nil {
				return false, err
			}
			s.Keys = append(s.Keys, n)
			changed = true
		} else if prep != nil && !now.Before(activateAt) {
			if err := c.rotateIntermediate(s, now); err != nil {
				return false, err
			}
			changed = true
		}
	}

	// JWT keys.
	jk := s.one(KindJWT, StateActive, "")
	if jk == nil || !now.Before(jk.NotAfter) {
		if err := c.rotateJWT(s, now); err != nil {
			return false, err
		}
		changed = true
	} else {
		activateAt := jk.NotAfter.Add(-max(lifetime(jk)/6, c.cfg.MaxJWTSVIDTTL))
		prep := s.one(KindJWT, StatePrepared, "")
		if prep == nil && !now.Before(activateAt.Add(-c.cfg.PrepareAhead)) {
			n, err := c.newJWTKey(now)
			if err != nil {
				return false, err
			}
			s.Keys = append(s.Keys, n)
			changed = true
		} else if prep != nil && !now.Before(activateAt) && !now.Before(prep.CreatedAt.Add(c.cfg.PrepareAhead)) {
			if err := c.rotateJWT(s, now); err != nil {
				return false, err
			}
			changed = true
		}
	}
	return changed, nil
}

func lifetime(k *keyRecord) time.Duration { return k.NotAfter.Sub(k.NotBefore) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (c *CA) generateKey() (*ecdsa.PrivateKey, error) {
	curve := elliptic.P256()
	if c.cfg.KeyType == KeyTypeP384 {
		curve = elliptic.P384()
	}
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", c.cfg.KeyType, err)
	}
	return k, nil
}

func (c *CA) newRecord(kind Kind, now, notAfter time.Time) (*keyRecord, *ecdsa.PrivateKey, error) {
	key, err := c.generateKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode new %s key: %w", kind, err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("encode new %s public key: %w", kind, err)
	}
	id, err := keyutil.CAKeyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	return &keyRecord{
		ID: id, Kind: kind, State: StatePrepared, CreatedAt: now,
		NotBefore: now.Add(-c.cfg.Backdate).Truncate(time.Second), NotAfter: notAfter.Truncate(time.Second),
		Key: der, PublicKey: pub, signer: key,
	}, key, nil
}

func (c *CA) newJWTKey(now time.Time) (*keyRecord, error) {
	k, _, err := c.newRecord(KindJWT, now, now.Add(c.cfg.JWTKeyTTL))
	return k, err
}
