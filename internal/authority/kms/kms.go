// Package kms is ward's key management service: named keys with
// classifications and versions (active, decrypt-only, disabled, destroyed),
// rotation by hand and on schedule, and the envelope operations (encrypt,
// decrypt, generate data key, rewrap, batch forms). Key records live in the
// barrier-encrypted store under paths derived by HMAC, so not even key names
// reach storage in the clear. Every operation is audited through Auditor
// and fails if its audit event cannot be written.
//
// Rollback of key records: the barrier binds a stored value to its path,
// not to its age, so someone with write access to storage could copy an
// older record back (from a backup or an etcd snapshot) and resurrect a
// destroyed version. Every record therefore carries a revision that grows
// with each change, and every successful key-changing audit event records
// the record's new revision and an HMAC digest of it. With a Witness (the
// audit log's per-key index) the KMS refuses a record older than, or
// different from, the newest one the audit log recorded: it reports the
// rollback (error log, counter, audit event) and every use of the key
// fails until the newest record is restored.
package kms

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// Version states as stored. Display states "active" and "decrypt-only"
// are derived from enabled + latest.
const (
	StateEnabled   = "enabled"
	StateDisabled  = "disabled"
	StateDestroyed = "destroyed"
)

const keyPrefix = "kms/keys/"

// AuditRecord is what kms reports about each operation; the server adds
// actor, request id and time, and HMACs Context values.
type AuditRecord struct {
	Operation string
	Key       string
	Version   uint32
	Result    string // "ok", "error", "started"
	Error     string
	Count     int
	Context   map[string]string // encryption context: hashed before logging
	Fields    map[string]string // safe values
}

// Auditor appends audit events; an error means the event is not durable
// and the operation must not take effect.
type Auditor interface {
	Audit(ctx context.Context, r AuditRecord) error
}

// Error is a KMS error with a kind the API maps to a status code.
type Error struct {
	Kind Kind
	Msg  string
}

// Kind classifies errors for the API layer.
type Kind int

const (
	KindInvalid Kind = iota + 1
	KindNotFound
	KindExists
	KindPrecondition // disabled, destroyed, below min-decrypt
	KindAuth         // ciphertext failed authentication
	KindConflict
	KindUnavailable // storage or audit failed
	KindRolledBack  // the stored record is older than the audit log says
)

func (e *Error) Error() string { return e.Msg }

func errorf(k Kind, format string, a ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, a...)}
}

// KindOf returns the kind of err, or 0.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// VersionRecord is one stored key version.
type VersionRecord struct {
	Version      uint32    `json:"version"`
	State        string    `json:"state"`
	Alg          string    `json:"alg"`
	Created      time.Time `json:"created"`
	StateChanged time.Time `json:"state_changed"`
	Material     []byte    `json:"material,omitempty"`
}

// KeyRecord is one stored key (encrypted by the barrier before storage).
type KeyRecord struct {
	Name string `json:"name"`
	// Revision grows by one with every change of the record; the audit
	// log records it (with a digest) so an older copy is recognised.
	Revision          uint64          `json:"revision,omitempty"`
	Classification    string          `json:"classification"`
	Purpose           string          `json:"purpose,omitempty"`
	Created           time.Time       `json:"created"`
	LastRotated       time.Time       `json:"last_rotated"`
	MinDecryptVersion uint32          `json:"min_decrypt_version"`
	Versions          []VersionRecord `json:"versions"`
}

// Latest returns the newest version number.
func (k *KeyRecord) Latest() uint32 { return k.Versions[len(k.Versions)-1].Version }

func (k *KeyRecord) version(v uint32) *VersionRecord {
	if v == 0 || int(v) > len(k.Versions) {
		return nil
	}
	return &k.Versions[v-1]
}

// DisplayState is the state a user sees for version v.
func (k *KeyRecord) DisplayState(v *VersionRecord) string {
	switch {
	case v.State == StateDestroyed:
		return "destroyed"
	case v.State == StateDisabled:
		return "disabled"
	case v.Version == k.Latest():
		return "active"
	case v.Version < k.MinDecryptVersion:
		return "below-min-decrypt"
	default:
		return "decrypt-only"
	}
}

// View is a key without material, for listing and display.
type View struct {
	KeyRecord
	Algorithm      string
	RotationPeriod time.Duration
	NextRotation   time.Time
	KeepVersions   uint32
}

// loaded is a cached key with prepared crypto per version.
type loaded struct {
	rec      KeyRecord
	rev      int64
	digest   string // HMAC of the stored record bytes
	versions map[uint32]*kmscrypto.Version
}

// Manager is the KMS. Safe for concurrent use.
type Manager struct {
	st      store.Store
	pathKey []byte
	table   Table
	audit   Auditor
	now     func() time.Time
	log     *slog.Logger

	witness   Witness
	digestKey []byte

	mu    sync.RWMutex
	cache map[string]*loaded // by name
	names map[string]string  // storage path -> name

	rollbacks  atomic.Uint64
	reportedMu sync.Mutex
	reported   map[string]uint64 // key name -> stored revision already reported
}

// Mark is what the audit log last recorded about a key record.
type Mark struct {
	Revision  uint64
	Digest    string
	Seq       uint64   // the audit event that recorded it
	Destroyed []uint32 // versions the log recorded as destroyed
}

// Witness tells the KMS the newest record revision the audit log holds for
// a key (ok false: none recorded). An error means it cannot tell, and the
// key is not used (fail closed).
type Witness interface {
	Latest(ctx context.Context, name string) (m Mark, ok bool, err error)
}

// WithWitness makes the KMS check every key record it loads against w.
func WithWitness(w Witness) Option { return func(m *Manager) { m.witness = w } }

// RollbacksDetected counts key records refused because they were older
// than (or differed from) what the audit log recorded.
func (m *Manager) RollbacksDetected() uint64 { return m.rollbacks.Load() }

// Option configures a Manager.
type Option func(*Manager)

// WithClock sets the time source (tests).
func WithClock(now func() time.Time) Option { return func(m *Manager) { m.now = now } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// New returns a Manager over st, which must be barrier-encrypted. pathKey
// is a secret used to derive storage paths from key names.
func New(st store.Store, pathKey []byte, table Table, a Auditor, opts ...Option) (*Manager, error) {
	if err := table.Validate(); err != nil {
		return nil, err
	}
	if len(pathKey) < 32 {
		return nil, errors.New("kms: path key must be at least 32 bytes")
	}
	m := &Manager{st: st, pathKey: pathKey, table: table, audit: a, now: time.Now, log: slog.Default(),
		cache: map[string]*loaded{}, names: map[string]string{}, reported: map[string]uint64{}}
	for _, o := range opts {
		o(m)
	}
	h := hmac.New(sha256.New, pathKey)
	h.Write([]byte("ward kms record digest v1"))
	m.digestKey = h.Sum(nil)
	return m, nil
}

// Table returns the classification table.
func (m *Manager) Table() Table { return m.table }

// recordDigest is the HMAC of a stored record's bytes: the audit log holds
// it without learning anything about the record (which holds key material).
func (m *Manager) recordDigest(b []byte) string {
	h := hmac.New(sha256.New, m.digestKey)
	h.Write(b)
	return "hmac-sha256:" + hex.EncodeToString(h.Sum(nil))
}

func (m *Manager) path(name string) string {
	h := hmac.New(sha256.New, m.pathKey)
	h.Write([]byte(name))
	return keyPrefix + hex.EncodeToString(h.Sum(nil)[:20])
}

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

func prepare(rec KeyRecord, rev int64, digest string) (*loaded, error) {
	l := &loaded{rec: rec, rev: rev, digest: digest, versions: map[uint32]*kmscrypto.Version{}}
	for _, v := range rec.Versions {
		if v.State == StateDestroyed {
			continue
		}
		alg, err := kmsfmt.ParseAlg(v.Alg)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %v", rec.Name, v.Version, err)
		}
		kv, err := kmscrypto.NewVersion(alg, v.Material)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %v", rec.Name, v.Version, err)
		}
		l.versions[v.Version] = kv
	}
	return l, nil
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
		return nil, errorf(KindInvalid, "%v", err)
	}
	p := m.path(name)
	kv, err := m.st.Get(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		if err := m.checkMissing(ctx, name); err != nil {
			return nil, err
		}
		return nil, errorf(KindNotFound, "key %q does not exist: create it with `ward key create %s --classification ...` or check the name with `ward key list`", name, name)
	}
	if err != nil {
		return nil, errorf(KindUnavailable, "reading key %q: %v", name, err)
	}
	var rec KeyRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, errorf(KindUnavailable, "key %q: stored record is unreadable: %v", name, err)
	}
	if rec.Name != name {
		return nil, errorf(KindUnavailable, "key %q: stored record names another key; storage was tampered with", name)
	}
	digest := m.recordDigest(kv.Value)
	if err := m.checkRecord(ctx, &rec, digest); err != nil {
		return nil, err
	}
	l, err := prepare(rec, kv.Revision, digest)
	if err != nil {
		return nil, errorf(KindUnavailable, "%v", err)
	}
	m.mu.Lock()
	if cur, ok := m.cache[name]; !ok || cur.rev < l.rev {
		m.cache[name] = l
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
			return nil, errorf(KindUnavailable, "storing key %q: %v", name, err)
		}
		nl, err := prepare(rec, rev, m.recordDigest(b))
		if err != nil {
			return nil, errorf(KindUnavailable, "%v", err)
		}
		m.mu.Lock()
		if cur, ok := m.cache[name]; !ok || cur.rev < rev {
			m.cache[name] = nl
		}
		m.mu.Unlock()
		return nl, nil
	}
	return nil, errorf(KindConflict, "key %q is being changed concurrently by another authority: retry", name)
}

func cloneRecord(r KeyRecord) KeyRecord {
	r.Versions = append([]VersionRecord(nil), r.Versions...)
	return r
}

func (m *Manager) view(l *loaded) View {
	rec := cloneRecord(l.rec)
	for i := range rec.Versions {
		rec.Versions[i].Material = nil
	}
	v := View{KeyRecord: rec}
	if c, err := m.table.Lookup(rec.Classification); err == nil {
		v.Algorithm = c.Algorithm.String()
		v.RotationPeriod = c.RotationPeriod
		v.NextRotation = rec.LastRotated.Add(c.RotationPeriod)
		v.KeepVersions = c.KeepVersions
	}
	return v
}

// auditAdmin writes the "started" event of an admin mutation: if that
// cannot be written the mutation does not happen (fail closed).
func (m *Manager) auditStart(ctx context.Context, op, name string, fields map[string]string) error {
	if err := m.audit.Audit(ctx, AuditRecord{Operation: op, Key: name, Result: "started", Fields: fields}); err != nil {
		return errorf(KindUnavailable, "audit log unavailable, %s on %q refused: %v", op, name, err)
	}
	return nil
}

func (m *Manager) auditEnd(ctx context.Context, op, name string, version uint32, fields map[string]string, opErr error) error {
	r := AuditRecord{Operation: op, Key: name, Version: version, Result: "ok", Fields: fields}
	if opErr != nil {
		r.Result, r.Error = "error", opErr.Error()
	}
	if err := m.audit.Audit(ctx, r); err != nil {
		if opErr != nil {
			return opErr
		}
		return errorf(KindUnavailable, "%s on %q was applied but its audit event could not be written: %v", op, name, err)
	}
	return opErr
}

// Create creates key name with classification.
func (m *Manager) Create(ctx context.Context, name, classification, purpose string) (View, error) {
	fields := map[string]string{"classification": classification}
	if err := kmsfmt.ValidateKeyName(name); err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errorf(KindInvalid, "%v", err))
	}
	c, err := m.table.Lookup(classification)
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errorf(KindInvalid, "%v", err))
	}
	if _, err := m.st.Get(ctx, m.path(name)); errors.Is(err, store.ErrNotFound) {
		// The name is free in storage; if the audit log knows the key, its
		// record was deleted or rolled back, and re-creating would hide it.
		if err := m.checkMissing(ctx, name); err != nil {
			return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, err)
		}
	}
	if err := m.auditStart(ctx, "key.create", name, fields); err != nil {
		return View{}, err
	}
	now := m.now().UTC()
	rec := KeyRecord{Name: name, Revision: 1, Classification: c.Name, Purpose: purpose, Created: now, LastRotated: now, MinDecryptVersion: 1,
		Versions: []VersionRecord{{Version: 1, State: StateEnabled, Alg: c.Algorithm.String(), Created: now, StateChanged: now, Material: kmscrypto.NewKey()}}}
	b, err := json.Marshal(rec)
	if err != nil {
		return View{}, err
	}
	rev, err := m.st.CompareAndSwap(ctx, m.path(name), b, 0)
	if errors.Is(err, store.ErrConflict) {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errorf(KindExists, "key %q already exists: pick another name, or rotate it with `ward key rotate %s`", name, name))
	}
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errorf(KindUnavailable, "storing key %q: %v", name, err))
	}
	l, err := prepare(rec, rev, m.recordDigest(b))
	if err != nil {
		return View{}, err
	}
	m.mu.Lock()
	m.cache[name], m.names[m.path(name)] = l, name
	m.mu.Unlock()
	return m.view(l), m.auditEnd(ctx, "key.create", name, 1, marked(fields, l), nil)
}

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
		return nil, errorf(KindUnavailable, "listing keys: %v", err)
	}
	var out []View
	for _, kv := range kvs {
		var rec KeyRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, errorf(KindUnavailable, "stored key record %s is unreadable: %v", kv.Key, err)
		}
		if !strings.HasPrefix(rec.Name, prefix) {
			continue
		}
		if kv.Key != m.path(rec.Name) {
			return nil, errorf(KindUnavailable, "stored key record %s names key %q, which lives elsewhere; storage was tampered with", kv.Key, rec.Name)
		}
		digest := m.recordDigest(kv.Value)
		if err := m.checkRecord(ctx, &rec, digest); err != nil {
			if skipRolledBack && KindOf(err) == KindRolledBack {
				continue
			}
			return nil, err
		}
		l, err := prepare(rec, kv.Revision, digest)
		if err != nil {
			return nil, errorf(KindUnavailable, "%v", err)
		}
		out = append(out, m.view(l))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Rotate adds a new active version. Versions beyond the classification's
// keep count are disabled (not destroyed: they can be re-enabled).
func (m *Manager) Rotate(ctx context.Context, name string) (View, error) {
	return m.rotate(ctx, name, false)
}

func (m *Manager) rotate(ctx context.Context, name string, onlyIfDue bool) (View, error) {
	fields := map[string]string{}
	if onlyIfDue {
		fields["trigger"] = "schedule"
	}
	if err := m.auditStart(ctx, "key.rotate", name, fields); err != nil {
		return View{}, err
	}
	var disabled []string
	skipped := false
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		disabled, skipped = nil, false
		c, err := m.table.Lookup(rec.Classification)
		if err != nil {
			return errorf(KindPrecondition, "key %q: %v", name, err)
		}
		now := m.now().UTC()
		if onlyIfDue && now.Before(rec.LastRotated.Add(c.RotationPeriod)) {
			skipped = true
			return nil
		}
		nv := rec.Latest() + 1
		rec.Versions = append(rec.Versions, VersionRecord{Version: nv, State: StateEnabled, Alg: c.Algorithm.String(), Created: now, StateChanged: now, Material: kmscrypto.NewKey()})
		rec.LastRotated = now
		if c.KeepVersions > 0 && nv > c.KeepVersions {
			for i := range rec.Versions {
				v := &rec.Versions[i]
				if v.Version <= nv-c.KeepVersions && v.State == StateEnabled {
					v.State, v.StateChanged = StateDisabled, now
					disabled = append(disabled, fmt.Sprint(v.Version))
				}
			}
		}
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.rotate", name, 0, fields, err)
	}
	if skipped {
		fields["skipped"] = "another authority rotated it first"
		return m.view(l), m.auditEnd(ctx, "key.rotate", name, l.rec.Latest(), marked(fields, l), nil)
	}
	if len(disabled) > 0 {
		fields["disabled_versions"] = strings.Join(disabled, ",")
	}
	return m.view(l), m.auditEnd(ctx, "key.rotate", name, l.rec.Latest(), marked(fields, l), nil)
}

// RotateDue rotates every key whose rotation period has passed. It is
// safe to run on several authorities at once: compare-and-swap lets one win.
func (m *Manager) RotateDue(ctx context.Context) (rotated []string, err error) {
	keys, err := m.listHealthy(ctx)
	if err != nil {
		return nil, err
	}
	now := m.now()
	for _, k := range keys {
		if k.RotationPeriod == 0 || now.Before(k.NextRotation) {
			continue
		}
		v, err := m.rotate(ctx, k.Name, true)
		if err != nil {
			m.log.Error("kms: scheduled rotation failed", "key", k.Name, "err", err)
			continue
		}
		if v.Latest() > k.Latest() {
			rotated = append(rotated, k.Name)
		}
	}
	return rotated, nil
}

// SetMinDecryptVersion sets the oldest version that may decrypt.
func (m *Manager) SetMinDecryptVersion(ctx context.Context, name string, minV uint32) (View, error) {
	fields := map[string]string{"min_decrypt_version": fmt.Sprint(minV)}
	if err := m.auditStart(ctx, "key.config", name, fields); err != nil {
		return View{}, err
	}
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		if minV == 0 || minV > rec.Latest() {
			return errorf(KindInvalid, "min-decrypt-version %d for key %q is out of range: use 1..%d (the latest version)", minV, name, rec.Latest())
		}
		rec.MinDecryptVersion = minV
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.config", name, 0, fields, err)
	}
	return m.view(l), m.auditEnd(ctx, "key.config", name, 0, marked(fields, l), nil)
}

// SetEnabled disables or re-enables a version. The latest version cannot
// be disabled (rotate first); a destroyed version cannot come back.
func (m *Manager) SetEnabled(ctx context.Context, name string, version uint32, enabled bool) (View, error) {
	op := "key.disable"
	if enabled {
		op = "key.enable"
	}
	if err := m.auditStart(ctx, op, name, map[string]string{"version": fmt.Sprint(version)}); err != nil {
		return View{}, err
	}
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		v := rec.version(version)
		if v == nil {
			return errorf(KindNotFound, "key %q has no version %d (versions 1..%d)", name, version, rec.Latest())
		}
		if v.State == StateDestroyed {
			return errorf(KindPrecondition, "key %q version %d was destroyed and cannot be enabled or disabled", name, version)
		}
		if !enabled && version == rec.Latest() {
			return errorf(KindPrecondition, "key %q version %d is the active version: rotate the key first, then disable it", name, version)
		}
		want := StateDisabled
		if enabled {
			want = StateEnabled
		}
		if v.State != want {
			v.State, v.StateChanged = want, m.now().UTC()
		}
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, op, name, version, nil, err)
	}
	return m.view(l), m.auditEnd(ctx, op, name, version, marked(nil, l), nil)
}

// Destroy erases a version's material for good (crypto-shredding).
func (m *Manager) Destroy(ctx context.Context, name string, version uint32) (View, error) {
	if err := m.auditStart(ctx, "key.destroy", name, map[string]string{"version": fmt.Sprint(version)}); err != nil {
		return View{}, err
	}
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		v := rec.version(version)
		if v == nil {
			return errorf(KindNotFound, "key %q has no version %d (versions 1..%d)", name, version, rec.Latest())
		}
		if v.State == StateDestroyed {
			return errorf(KindPrecondition, "key %q version %d is already destroyed", name, version)
		}
		if version == rec.Latest() {
			return errorf(KindPrecondition, "key %q version %d is the active version: rotate the key first, then destroy it", name, version)
		}
		for i := range v.Material {
			v.Material[i] = 0
		}
		v.Material, v.State, v.StateChanged = nil, StateDestroyed, m.now().UTC()
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.destroy", name, version, nil, err)
	}
	return m.view(l), m.auditEnd(ctx, "key.destroy", name, version,
		marked(map[string]string{"destroyed_version": fmt.Sprint(version)}, l), nil)
}

// usable checks that version v of l may decrypt.
func usable(l *loaded, v uint32) (*kmscrypto.Version, error) {
	rec := &l.rec
	name := rec.Name
	vr := rec.version(v)
	if vr == nil {
		return nil, errorf(KindNotFound, "key %q has no version %d (latest is %d): the ciphertext was not made by this key", name, v, rec.Latest())
	}
	switch vr.State {
	case StateDestroyed:
		return nil, errorf(KindPrecondition, "key %q version %d was destroyed: data encrypted under it can never be decrypted again", name, v)
	case StateDisabled:
		return nil, errorf(KindPrecondition, "key %q version %d is disabled: enable it with `ward key enable %s --version %d` to decrypt", name, v, name, v)
	}
	if v < rec.MinDecryptVersion {
		return nil, errorf(KindPrecondition, "key %q version %d is below its min-decrypt-version %d: lower it with `ward key config %s --min-decrypt-version %d`", name, v, rec.MinDecryptVersion, name, v)
	}
	kv := l.versions[v]
	if kv == nil {
		return nil, errorf(KindUnavailable, "key %q version %d has no material", name, v)
	}
	return kv, nil
}

func (m *Manager) encryptRaw(ctx context.Context, name string, plaintext []byte, encCtx map[string]string) ([]byte, uint32, error) {
	l, err := m.get(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	latest := l.rec.Latest()
	kv := l.versions[latest]
	if kv == nil || l.rec.Versions[latest-1].State != StateEnabled {
		return nil, 0, errorf(KindPrecondition, "key %q: the latest version %d is not usable: rotate the key", name, latest)
	}
	ct, err := kv.Encrypt(kmsfmt.Header{KeyName: name, Version: latest}, plaintext, encCtx)
	if err != nil {
		return nil, 0, errorf(KindInvalid, "encrypting with key %q: %v", name, err)
	}
	return ct, latest, nil
}

func (m *Manager) decryptRaw(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, kmsfmt.Header, error) {
	ct, err := kmsfmt.Dearmor(ciphertext)
	if err != nil {
		return nil, kmsfmt.Header{}, errorf(KindInvalid, "%v", err)
	}
	h, raw, payload, err := kmsfmt.Parse(ct)
	if err != nil {
		return nil, h, errorf(KindInvalid, "%v", err)
	}
	l, err := m.get(ctx, h.KeyName)
	if err != nil {
		return nil, h, err
	}
	kv, err := usable(l, h.Version)
	if err != nil {
		return nil, h, err
	}
	pt, err := kv.Decrypt(h, raw, payload, encCtx)
	if err != nil {
		if errors.Is(err, kmscrypto.ErrAuth) {
			return nil, h, errorf(KindAuth, "key %q version %d: %v", h.KeyName, h.Version, err)
		}
		return nil, h, errorf(KindInvalid, "%v", err)
	}
	return pt, h, nil
}

// MaxPlaintext bounds Encrypt's input: the KMS is for small payloads and
// data keys; use envelope encryption for anything larger.
const MaxPlaintext = 64 << 10

// Encrypt encrypts a small payload under the key's active version.
func (m *Manager) Encrypt(ctx context.Context, name string, plaintext []byte, encCtx map[string]string) ([]byte, uint32, error) {
	var ct []byte
	var v uint32
	var err error
	if len(plaintext) > MaxPlaintext {
		err = errorf(KindInvalid, "plaintext is %d bytes; the KMS encrypts at most %d: use `ward encrypt` (envelope encryption) for larger data", len(plaintext), MaxPlaintext)
	} else {
		ct, v, err = m.encryptRaw(ctx, name, plaintext, encCtx)
	}
	if aerr := m.auditData(ctx, "kms.encrypt", name, v, 1, encCtx, err); aerr != nil {
		return nil, 0, aerr
	}
	return ct, v, err
}

// Decrypt decrypts a ciphertext made by Encrypt or GenerateDataKey.
func (m *Manager) Decrypt(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, kmsfmt.Header, error) {
	pt, h, err := m.decryptRaw(ctx, ciphertext, encCtx)
	if aerr := m.auditData(ctx, "kms.decrypt", h.KeyName, h.Version, 1, encCtx, err); aerr != nil {
		return nil, h, aerr
	}
	return pt, h, err
}

// DataKey is a generated data key.
type DataKey struct {
	Plaintext []byte
	Wrapped   []byte
	Version   uint32
}

func dataKeySize(size uint32) (int, error) {
	if size == 0 {
		return 32, nil
	}
	if size < 16 || size > 64 {
		return 0, errorf(KindInvalid, "data key size %d is out of range: use 16..64 bytes (default 32)", size)
	}
	return int(size), nil
}

func (m *Manager) newDataKey(ctx context.Context, name string, size int, encCtx map[string]string) (DataKey, error) {
	dk := make([]byte, size)
	rand.Read(dk)
	w, v, err := m.encryptRaw(ctx, name, dk, encCtx)
	if err != nil {
		return DataKey{}, err
	}
	return DataKey{Plaintext: dk, Wrapped: w, Version: v}, nil
}

// GenerateDataKey returns a fresh data key, in plaintext and wrapped.
func (m *Manager) GenerateDataKey(ctx context.Context, name string, size uint32, encCtx map[string]string) (DataKey, error) {
	var dk DataKey
	n, err := dataKeySize(size)
	if err == nil {
		dk, err = m.newDataKey(ctx, name, n, encCtx)
	}
	if aerr := m.auditData(ctx, "kms.datakey", name, dk.Version, 1, encCtx, err); aerr != nil {
		return DataKey{}, aerr
	}
	return dk, err
}

// Rewrap decrypts with the version the ciphertext names and re-encrypts
// under the key's active version; the plaintext never leaves the KMS.
func (m *Manager) Rewrap(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, uint32, error) {
	pt, h, err := m.decryptRaw(ctx, ciphertext, encCtx)
	var out []byte
	var v uint32
	if err == nil {
		out, v, err = m.encryptRaw(ctx, h.KeyName, pt, encCtx)
		clear(pt)
	}
	fields := map[string]string{}
	if h.Version != 0 {
		fields["from_version"] = fmt.Sprint(h.Version)
	}
	if aerr := m.auditDataFields(ctx, "kms.rewrap", h.KeyName, v, 1, encCtx, fields, err); aerr != nil {
		return nil, 0, aerr
	}
	return out, v, err
}

func (m *Manager) auditData(ctx context.Context, op, key string, v uint32, count int, encCtx map[string]string, opErr error) error {
	return m.auditDataFields(ctx, op, key, v, count, encCtx, nil, opErr)
}

// auditDataFields audits a data operation after the fact: the operation
// has no side effect, so if the event cannot be written its result is
// withheld from the caller (fail closed).
func (m *Manager) auditDataFields(ctx context.Context, op, key string, v uint32, count int, encCtx, fields map[string]string, opErr error) error {
	r := AuditRecord{Operation: op, Key: key, Version: v, Count: count, Context: encCtx, Fields: fields, Result: "ok"}
	if opErr != nil {
		r.Result, r.Error = "error", opErr.Error()
		if KindOf(opErr) == KindAuth {
			r.Result = "denied"
		}
	}
	if err := m.audit.Audit(ctx, r); err != nil {
		return errorf(KindUnavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	return nil
}

// ItemResult is one result of a batch operation.
type ItemResult struct {
	Data    []byte
	Version uint32
	Err     error
}

// Item is one input of a batch operation.
type Item struct {
	Data    []byte
	Context map[string]string
}

// MaxBatch bounds the items of one batch call.
const MaxBatch = 10000

func checkBatch(n int) error {
	if n == 0 {
		return errorf(KindInvalid, "batch is empty: give at least one item")
	}
	if n > MaxBatch {
		return errorf(KindInvalid, "batch has %d items; the limit is %d: split it", n, MaxBatch)
	}
	return nil
}

// BatchEncrypt encrypts many payloads under one key; one audit event.
func (m *Manager) BatchEncrypt(ctx context.Context, name string, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	var latest uint32
	failed := 0
	for i, it := range items {
		if len(it.Data) > MaxPlaintext {
			out[i].Err = errorf(KindInvalid, "item %d: plaintext is %d bytes; the limit is %d", i, len(it.Data), MaxPlaintext)
		} else {
			out[i].Data, out[i].Version, out[i].Err = m.encryptRaw(ctx, name, it.Data, it.Context)
		}
		if out[i].Err != nil {
			failed++
		} else {
			latest = out[i].Version
		}
	}
	return out, m.auditBatch(ctx, "kms.encrypt", name, latest, len(items), failed, nil)
}

// BatchDecrypt decrypts many ciphertexts; one audit event.
func (m *Manager) BatchDecrypt(ctx context.Context, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	keys := map[string]bool{}
	failed := 0
	for i, it := range items {
		pt, h, err := m.decryptRaw(ctx, it.Data, it.Context)
		out[i] = ItemResult{Data: pt, Version: h.Version, Err: err}
		if err != nil {
			failed++
		}
		if h.KeyName != "" {
			keys[fmt.Sprintf("%s@%d", h.KeyName, h.Version)] = true
		}
	}
	return out, m.auditBatch(ctx, "kms.decrypt", "", 0, len(items), failed, keys)
}

// BatchRewrap rewraps many ciphertexts; one audit event.
func (m *Manager) BatchRewrap(ctx context.Context, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	keys := map[string]bool{}
	failed := 0
	for i, it := range items {
		pt, h, err := m.decryptRaw(ctx, it.Data, it.Context)
		if err == nil {
			out[i].Data, out[i].Version, err = m.encryptRaw(ctx, h.KeyName, pt, it.Context)
			clear(pt)
		}
		out[i].Err = err
		if err != nil {
			failed++
		}
		if h.KeyName != "" {
			keys[fmt.Sprintf("%s@%d", h.KeyName, h.Version)] = true
		}
	}
	return out, m.auditBatch(ctx, "kms.rewrap", "", 0, len(items), failed, keys)
}

// BatchGenerateDataKey returns count fresh data keys; one audit event.
func (m *Manager) BatchGenerateDataKey(ctx context.Context, name string, count int, size uint32, encCtx map[string]string) ([]DataKey, error) {
	if err := checkBatch(count); err != nil {
		return nil, err
	}
	n, err := dataKeySize(size)
	if err != nil {
		return nil, err
	}
	out := make([]DataKey, count)
	var v uint32
	for i := range out {
		if out[i], err = m.newDataKey(ctx, name, n, encCtx); err != nil {
			break
		}
		v = out[i].Version
	}
	if aerr := m.auditDataFields(ctx, "kms.datakey", name, v, count, encCtx, nil, err); aerr != nil {
		return nil, aerr
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (m *Manager) auditBatch(ctx context.Context, op, key string, v uint32, n, failed int, keys map[string]bool) error {
	fields := map[string]string{"batch": "true", "failed": fmt.Sprint(failed)}
	if len(keys) > 0 {
		ks := make([]string, 0, len(keys))
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		fields["keys"] = strings.Join(ks, ",")
	}
	r := AuditRecord{Operation: op, Key: key, Version: v, Count: n, Fields: fields, Result: "ok"}
	if failed == n {
		r.Result = "error"
	}
	if err := m.audit.Audit(ctx, r); err != nil {
		return errorf(KindUnavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	return nil
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
