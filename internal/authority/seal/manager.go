package seal

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/shamir"
	"github.com/wardproject/ward/internal/authority/store"
)

// Status describes the seal state.
type Status struct {
	Initialized bool
	Sealed      bool
	// Type is the seal type stored at init ("" before init).
	Type string
	// Threshold and Shares are 0 for auto seals.
	Threshold int
	Shares    int
	// Progress is how many valid shares were submitted in the current
	// unseal attempt.
	Progress int
}

// Manager runs the seal lifecycle over a raw store and a barrier. It is
// safe for concurrent use. Shares submitted towards an unseal are held in
// memory only, until the threshold is reached, ResetProgress or Seal.
type Manager struct {
	raw  store.Store
	b    *barrier.Barrier
	seal Seal

	mu       sync.Mutex
	cfg      *Config  // cached once initialised; re-read when sealed (a rekey changes it)
	progress [][]byte // submitted shares (secret)
	used     []int    // indexes in cfg.ShareHashes of submitted shares
	rekey    *rekeySession
}

// NewManager returns a Manager for barrier b over raw (the same store the
// barrier wraps) protected by s.
func NewManager(raw store.Store, b *barrier.Barrier, s Seal) *Manager {
	return &Manager{raw: raw, b: b, seal: s}
}

// loadLocked returns the stored config, nil if not initialised.
func (m *Manager) loadLocked(ctx context.Context) (*Config, error) {
	if m.cfg != nil {
		return m.cfg, nil
	}
	kv, err := m.raw.Get(ctx, ConfigKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", ConfigKey, err)
	}
	cfg, err := ParseConfig(kv.Value)
	if err != nil {
		return nil, err
	}
	if cfg.Type != m.seal.Type() {
		return nil, fmt.Errorf("%w: initialised with %q, configured with %q; configure the %q seal", ErrSealMismatch, cfg.Type, m.seal.Type(), cfg.Type)
	}
	_, share := m.seal.(ShareSeal)
	_, recovery := m.seal.(RecoverySeal) // recovery shares are optional
	if share != (cfg.Shares > 0) && !(recovery && cfg.Shares == 0) {
		return nil, fmt.Errorf("%w: the %q seal's configuration has %d shares", ErrBadConfig, cfg.Type, cfg.Shares)
	}
	m.cfg = &cfg
	return m.cfg, nil
}

func (m *Manager) requireLocked(ctx context.Context) (*Config, error) {
	cfg, err := m.loadLocked(ctx)
	if err == nil && cfg == nil {
		err = ErrNotInitialized
	}
	return cfg, err
}

func (m *Manager) statusLocked(cfg *Config) Status {
	st := Status{Sealed: m.b.Sealed(), Progress: len(m.progress)}
	if cfg != nil {
		st.Initialized, st.Type, st.Threshold, st.Shares = true, cfg.Type, cfg.Threshold, cfg.Shares
	}
	return st
}

func (m *Manager) resetLocked() {
	for _, s := range m.progress {
		clear(s)
	}
	m.progress, m.used = nil, nil
}

// Init creates the root key, the barrier keyring and the seal
// configuration, all in one create-only batch: if anything fails, or the
// authority is already initialised, nothing is written. Before writing it
// checks that the seal gives the root key back. The barrier stays sealed.
// For a share seal the result holds the shares, returned this once only.
func (m *Manager) Init(ctx context.Context, opts InitOptions) (InitResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cfg, err := m.loadLocked(ctx); err != nil {
		return InitResult{}, err
	} else if cfg != nil {
		return InitResult{}, ErrAlreadyInitialized
	}
	ss, isShare := m.seal.(ShareSeal)
	as, isAuto := m.seal.(AutoSeal)
	if isShare && isAuto && opts.Shares == 0 && opts.Threshold == 0 {
		isShare = false // a RecoverySeal initialised without recovery shares
	}
	switch {
	case isShare && (opts.Threshold < 2 || opts.Threshold > opts.Shares || opts.Shares > shamir.MaxShares):
		return InitResult{}, fmt.Errorf("%w: threshold %d of %d shares; use 2 <= threshold <= shares <= %d", ErrBadOptions, opts.Threshold, opts.Shares, shamir.MaxShares)
	case isAuto && !isShare && (opts.Shares != 0 || opts.Threshold != 0):
		return InitResult{}, fmt.Errorf("%w: the %q seal unseals automatically and takes no shares or threshold", ErrBadOptions, m.seal.Type())
	case !isShare && !isAuto:
		return InitResult{}, fmt.Errorf("%q is neither a share seal nor an auto seal", m.seal.Type())
	}

	root := make([]byte, barrier.KeySize)
	rand.Read(root)
	defer clear(root)
	cfg, shares, err := m.seal.Init(ctx, root, opts)
	if err != nil {
		return InitResult{}, fmt.Errorf("initialising %q seal: %w; nothing was written", m.seal.Type(), err)
	}
	cfg.Version, cfg.Type, cfg.Shares, cfg.Threshold, cfg.ShareHashes = 1, m.seal.Type(), 0, 0, nil
	var check []byte
	if isShare {
		if len(shares) != opts.Shares {
			return InitResult{}, fmt.Errorf("%q seal made %d shares, %d were asked for; nothing was written", m.seal.Type(), len(shares), opts.Shares)
		}
		cfg.Shares, cfg.Threshold = opts.Shares, opts.Threshold
		for _, s := range shares {
			cfg.ShareHashes = append(cfg.ShareHashes, shareHash(s))
		}
		check, err = ss.Combine(cfg, shares[len(shares)-opts.Threshold:])
		if err == nil && isAuto { // a RecoverySeal: check both ways back
			if subtle.ConstantTimeCompare(check, root) != 1 {
				err = errors.New("the recovery shares combine to a different root key")
			}
			clear(check)
			check = nil
		}
	}
	if err == nil && isAuto {
		check, err = as.Unwrap(ctx, cfg)
	}
	if err != nil {
		return InitResult{}, fmt.Errorf("checking that the %q seal gives the root key back: %w; nothing was written", m.seal.Type(), err)
	}
	if subtle.ConstantTimeCompare(check, root) != 1 {
		clear(check)
		return InitResult{}, fmt.Errorf("the %q seal gave back a different root key when checked; nothing was written", m.seal.Type())
	}
	clear(check)
	data, err := json.Marshal(cfg)
	if err != nil {
		return InitResult{}, fmt.Errorf("encoding configuration: %w", err)
	}
	if _, err := ParseConfig(data); err != nil {
		return InitResult{}, fmt.Errorf("the seal made an invalid configuration (%w); nothing was written", err)
	}
	err = m.b.Initialize(ctx, root, store.Op{Key: ConfigKey, Value: data, ExpectRevision: 0})
	if errors.Is(err, barrier.ErrAlreadyInitialized) {
		return InitResult{}, fmt.Errorf("%w (another process initialised it first)", ErrAlreadyInitialized)
	}
	if err != nil {
		return InitResult{}, fmt.Errorf("writing the keyring and seal configuration: %w", err)
	}
	m.cfg = &cfg
	m.resetLocked()
	return InitResult{Shares: shares}, nil
}

// Status reports the seal state; it reads the store until initialised.
func (m *Manager) Status(ctx context.Context) (Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cfg, err := m.loadLocked(ctx)
	if err != nil {
		return Status{}, err
	}
	return m.statusLocked(cfg), nil
}

// SubmitShare adds one encoded share (EncodeShare form) towards unsealing.
// A share that is malformed, not one of the shares made at init, or
// already submitted is rejected at once and progress is unchanged. When
// the threshold is reached the shares are combined and the barrier
// unsealed; whether that succeeds or fails, progress starts again at 0.
func (m *Manager) SubmitShare(ctx context.Context, encoded string) (Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.progress) == 0 {
		m.cfg = nil // a new attempt: read the configuration again (rekeys)
	}
	cfg, err := m.requireLocked(ctx)
	if err != nil {
		return m.statusLocked(cfg), err
	}
	ss, ok := m.seal.(ShareSeal)
	if !ok {
		return m.statusLocked(cfg), fmt.Errorf("%w (seal %q)", ErrNotShareSeal, cfg.Type)
	}
	if cfg.Shares == 0 {
		return m.statusLocked(cfg), fmt.Errorf("%w (seal %q)", ErrNoRecoveryShares, cfg.Type)
	}
	if !m.b.Sealed() {
		m.resetLocked()
		return m.statusLocked(cfg), ErrAlreadyUnsealed
	}
	share, err := DecodeShare(encoded)
	if err != nil {
		return m.statusLocked(cfg), fmt.Errorf("%w; progress unchanged at %d of %d", err, len(m.progress), cfg.Threshold)
	}
	h := shareHash(share)
	idx := -1
	for i, known := range cfg.ShareHashes {
		if subtle.ConstantTimeCompare([]byte(h), []byte(known)) == 1 {
			idx = i
		}
	}
	if idx < 0 {
		clear(share)
		return m.statusLocked(cfg), fmt.Errorf("%w; progress unchanged at %d of %d", ErrUnknownShare, len(m.progress), cfg.Threshold)
	}
	for _, u := range m.used {
		if u == idx {
			clear(share)
			return m.statusLocked(cfg), fmt.Errorf("%w; progress unchanged at %d of %d", ErrRepeatedShare, len(m.progress), cfg.Threshold)
		}
	}
	m.progress, m.used = append(m.progress, share), append(m.used, idx)
	if len(m.progress) < cfg.Threshold {
		return m.statusLocked(cfg), nil
	}
	root, err := ss.Combine(*cfg, m.progress)
	m.resetLocked()
	if err != nil {
		return m.statusLocked(cfg), fmt.Errorf("%w; progress was reset, submit the shares again", err)
	}
	defer clear(root)
	if err := m.b.Unseal(ctx, root); err != nil {
		if errors.Is(err, barrier.ErrBadRootKey) {
			return m.statusLocked(cfg), fmt.Errorf("%w: the %d shares are genuine but their key does not open %s; progress was reset", ErrKeyringMismatch, cfg.Threshold, barrier.KeyringKey)
		}
		return m.statusLocked(cfg), fmt.Errorf("unsealing the barrier: %w; progress was reset, submit the shares again", err)
	}
	return m.statusLocked(cfg), nil
}

// ResetProgress forgets the shares submitted so far.
func (m *Manager) ResetProgress() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
}

// Seal seals the barrier (its keys are zeroed) and forgets unseal
// progress. Sealing a sealed authority is not an error.
func (m *Manager) Seal(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
	if m.rekey != nil {
		m.rekey.wipe()
		m.rekey = nil
	}
	m.b.Seal()
	m.cfg = nil // read again: another authority may rekey meanwhile
	_, err := m.requireLocked(ctx)
	return err
}

// AutoUnseal unseals with an auto seal (key file, HSM).
func (m *Manager) AutoUnseal(ctx context.Context) (Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cfg, err := m.requireLocked(ctx)
	if err != nil {
		return m.statusLocked(cfg), err
	}
	as, ok := m.seal.(AutoSeal)
	if !ok {
		return m.statusLocked(cfg), fmt.Errorf("%w (seal %q)", ErrNotAutoSeal, cfg.Type)
	}
	if !m.b.Sealed() {
		return m.statusLocked(cfg), ErrAlreadyUnsealed
	}
	root, err := as.Unwrap(ctx, *cfg)
	if err != nil {
		return m.statusLocked(cfg), err
	}
	defer clear(root)
	if err := m.b.Unseal(ctx, root); err != nil {
		if errors.Is(err, barrier.ErrBadRootKey) {
			return m.statusLocked(cfg), fmt.Errorf("%w: the %q seal's key does not open %s", ErrKeyringMismatch, cfg.Type, barrier.KeyringKey)
		}
		return m.statusLocked(cfg), fmt.Errorf("unsealing the barrier: %w", err)
	}
	return m.statusLocked(cfg), nil
}

func shareHash(share []byte) string {
	h := sha256.Sum256(share)
	return hex.EncodeToString(h[:])
}
