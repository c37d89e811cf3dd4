// Package kms is ward's key management service: named keys with
// classifications and versions (active, decrypt-only, disabled, destroyed),
// rotation by hand and on schedule, and the envelope operations (encrypt,
// decrypt, generate data key, rewrap, batch forms). Key records live in the
// barrier-encrypted store under paths derived by HMAC, so not even key names
// reach storage in the clear. Every operation is audited through an
// audit.Recorder and fails if its audit event cannot be written.
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
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
)

const keyPrefix = "kms/keys/"

// Manager is the KMS. Safe for concurrent use.
type Manager struct {
	st      store.Store
	pathKey []byte
	table   Table
	audit   audit.Recorder
	now     func() time.Time
	log     *slog.Logger

	witness   Witness
	digestKey []byte
	hsm       HSM // nil: hardware-backed classifications are refused

	mu    sync.RWMutex
	cache map[string]*loaded // by name
	names map[string]string  // storage path -> name

	rollbacks  atomic.Uint64
	reportedMu sync.Mutex
	reported   map[string]uint64 // key name -> stored revision already reported
}

// Option configures a Manager.
type Option func(*Manager)

// WithClock sets the time source (tests).
func WithClock(now func() time.Time) Option { return func(m *Manager) { m.now = now } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// New returns a Manager over st, which must be barrier-encrypted. pathKey
// is a secret used to derive storage paths from key names.
func New(st store.Store, pathKey []byte, table Table, a audit.Recorder, opts ...Option) (*Manager, error) {
	if err := table.Validate(); err != nil {
		return nil, err
	}
	if len(pathKey) < 32 {
		return nil, errors.New("the KMS path key must be at least 32 bytes")
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
