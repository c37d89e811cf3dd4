package seal

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/shamir"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Rekey errors; returned errors wrap them for errors.Is.
var (
	ErrNoRekey       = errs.New(errs.Precondition, "no rekey is in progress: start one with `ward operator rekey --shares N --threshold M`")
	ErrRekeyRunning  = errs.New(errs.Precondition, "a rekey is already in progress: finish it with its nonce, or cancel it with `ward operator rekey --cancel`")
	ErrRekeyNonce    = errs.New(errs.Invalid, "the rekey nonce does not match the rekey in progress (it was cancelled or restarted): check the nonce `ward operator rekey --status` shows")
	ErrRekeyNotShare = errs.New(errs.Precondition, "rekey replaces unseal shares: this authority's seal takes none")
)

// RekeyStatus describes a rekey in progress.
type RekeyStatus struct {
	// Started is false when no rekey is in progress.
	Started bool
	// Nonce names the rekey: every share must be submitted with it, so a
	// share meant for an earlier (cancelled) rekey never counts.
	Nonce string
	// Shares and Threshold are the new shares' number and quorum.
	Shares    int
	Threshold int
	// OldThreshold is how many of the current shares must be submitted;
	// Progress how many were.
	OldThreshold int
	Progress     int
}

type rekeySession struct {
	nonce    string
	opts     InitOptions
	progress [][]byte
	used     []int
}

func (s *rekeySession) wipe() {
	for _, p := range s.progress {
		clear(p)
	}
	s.progress, s.used = nil, nil
}

func (m *Manager) rekeyStatusLocked(cfg *Config) RekeyStatus {
	r := m.rekey
	if r == nil {
		return RekeyStatus{}
	}
	st := RekeyStatus{Started: true, Nonce: r.nonce, Shares: r.opts.Shares, Threshold: r.opts.Threshold, Progress: len(r.progress)}
	if cfg != nil {
		st.OldThreshold = cfg.Threshold
	}
	return st
}

// RekeyStart begins replacing the unseal shares with opts.Shares new ones
// of which opts.Threshold unseal. Nothing changes until a quorum of the
// current shares was submitted with RekeySubmit.
func (m *Manager) RekeyStart(ctx context.Context, opts InitOptions) (RekeyStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cfg, err := m.requireLocked(ctx)
	if err != nil {
		return RekeyStatus{}, err
	}
	if _, ok := m.seal.(ShareSeal); !ok {
		return RekeyStatus{}, fmt.Errorf("%w (seal %q)", ErrRekeyNotShare, cfg.Type)
	}
	if m.rekey != nil {
		return m.rekeyStatusLocked(cfg), ErrRekeyRunning
	}
	if opts.Threshold < 2 || opts.Threshold > opts.Shares || opts.Shares > shamir.MaxShares {
		return RekeyStatus{}, fmt.Errorf("%w: threshold %d of %d shares; use 2 <= threshold <= shares <= %d", ErrBadOptions, opts.Threshold, opts.Shares, shamir.MaxShares)
	}
	var n [16]byte
	rand.Read(n[:])
	m.rekey = &rekeySession{nonce: hex.EncodeToString(n[:]), opts: opts}
	return m.rekeyStatusLocked(cfg), nil
}

// RekeyStatus reports the rekey in progress, if any.
func (m *Manager) RekeyStatus(ctx context.Context) (RekeyStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cfg, err := m.requireLocked(ctx)
	if err != nil {
		return RekeyStatus{}, err
	}
	return m.rekeyStatusLocked(cfg), nil
}

// RekeyCancel forgets the rekey in progress and the shares submitted to
// it; nothing was changed. It reports whether one was in progress.
func (m *Manager) RekeyCancel() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rekey == nil {
		return false
	}
	m.rekey.wipe()
	m.rekey = nil
	return true
}

// RekeySubmit adds one of the current shares to the rekey named by nonce.
// A malformed, unknown (another authority's) or repeated share is refused
// and changes nothing. With the quorum, the current root key is recovered
// and checked against the keyring, a new root key is split into the new
// shares, and the keyring (rewrapped under the new root key) and the new
// seal configuration are written in one conditional batch: the old shares
// stop working, no stored value changes. The new shares are returned this
// once. Whether the last step succeeds or fails, the rekey ends.
func (m *Manager) RekeySubmit(ctx context.Context, nonce, encoded string) (RekeyStatus, [][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg = nil // another authority may have rekeyed: read it again
	cfg, err := m.requireLocked(ctx)
	if err != nil {
		return RekeyStatus{}, nil, err
	}
	ss, ok := m.seal.(ShareSeal)
	if !ok {
		return RekeyStatus{}, nil, fmt.Errorf("%w (seal %q)", ErrRekeyNotShare, cfg.Type)
	}
	r := m.rekey
	if r == nil {
		return RekeyStatus{}, nil, ErrNoRekey
	}
	if subtle.ConstantTimeCompare([]byte(nonce), []byte(r.nonce)) != 1 {
		return m.rekeyStatusLocked(cfg), nil, ErrRekeyNonce
	}
	share, err := DecodeShare(encoded)
	if err != nil {
		return m.rekeyStatusLocked(cfg), nil, fmt.Errorf("%w; rekey progress unchanged at %d of %d", err, len(r.progress), cfg.Threshold)
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
		return m.rekeyStatusLocked(cfg), nil, fmt.Errorf("%w; rekey progress unchanged at %d of %d", ErrUnknownShare, len(r.progress), cfg.Threshold)
	}
	for _, u := range r.used {
		if u == idx {
			clear(share)
			return m.rekeyStatusLocked(cfg), nil, fmt.Errorf("%w; rekey progress unchanged at %d of %d", ErrRepeatedShare, len(r.progress), cfg.Threshold)
		}
	}
	r.progress, r.used = append(r.progress, share), append(r.used, idx)
	if len(r.progress) < cfg.Threshold {
		return m.rekeyStatusLocked(cfg), nil, nil
	}
	defer func() { r.wipe(); m.rekey = nil }()
	oldRoot, err := ss.Combine(*cfg, r.progress)
	if err != nil {
		return RekeyStatus{}, nil, fmt.Errorf("%w; the rekey was cancelled, nothing was changed", err)
	}
	defer clear(oldRoot)
	newRoot := make([]byte, barrier.KeySize)
	rand.Read(newRoot)
	defer clear(newRoot)
	newCfg, shares, err := m.seal.Init(ctx, newRoot, r.opts)
	if err != nil {
		return RekeyStatus{}, nil, fmt.Errorf("making the new shares: %w; the rekey was cancelled, nothing was changed", err)
	}
	if len(shares) != r.opts.Shares {
		return RekeyStatus{}, nil, fmt.Errorf("%q seal made %d shares, %d were asked for; nothing was changed", cfg.Type, len(shares), r.opts.Shares)
	}
	newCfg.Version, newCfg.Type, newCfg.Shares, newCfg.Threshold, newCfg.ShareHashes = 1, m.seal.Type(), r.opts.Shares, r.opts.Threshold, nil
	for _, s := range shares {
		newCfg.ShareHashes = append(newCfg.ShareHashes, shareHash(s))
	}
	check, err := ss.Combine(newCfg, shares[len(shares)-r.opts.Threshold:])
	if err != nil || subtle.ConstantTimeCompare(check, newRoot) != 1 {
		clear(check)
		return RekeyStatus{}, nil, fmt.Errorf("the new shares do not give the new root key back when checked; nothing was changed")
	}
	clear(check)
	data, err := json.Marshal(newCfg)
	if err != nil {
		return RekeyStatus{}, nil, fmt.Errorf("encoding configuration: %w", err)
	}
	if _, err := ParseConfig(data); err != nil {
		return RekeyStatus{}, nil, fmt.Errorf("the seal made an invalid configuration (%w); nothing was changed", err)
	}
	kv, err := m.raw.Get(ctx, ConfigKey)
	if err != nil {
		return RekeyStatus{}, nil, fmt.Errorf("reading %s: %w; nothing was changed", ConfigKey, err)
	}
	if err := m.b.Rekey(ctx, oldRoot, newRoot, store.Op{Key: ConfigKey, Value: data, ExpectRevision: kv.Revision}); err != nil {
		if errors.Is(err, barrier.ErrBadRootKey) {
			return RekeyStatus{}, nil, fmt.Errorf("%w; the rekey was cancelled, nothing was changed", ErrKeyringMismatch)
		}
		return RekeyStatus{}, nil, fmt.Errorf("%w; the rekey was cancelled", err)
	}
	m.cfg = &newCfg
	return RekeyStatus{}, shares, nil
}
