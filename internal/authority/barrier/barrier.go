// Package barrier is ward's encryption barrier: the only path from the
// authority to storage. It keeps a keyring of barrier keys, wrapped under a
// 256-bit root key and stored at "core/keyring", and offers a store.Store
// view in which every value is AES-256-GCM encrypted, bound to its storage
// key, before it reaches the backend. While sealed it holds no keys and the
// view refuses every operation.
//
// Value format (also used for the keyring, with term 0 meaning "wrapped
// under the root key"):
//
//	version (1 byte, 1) | keyring term (4 bytes, big endian) | nonce (12) | ciphertext+tag
//
// The associated data is the 5-byte header followed by the storage key, so
// a value copied to another key, or re-labelled with another term, fails
// authentication. The term names the barrier key that encrypted the value
// so keys can rotate later with old values staying readable.
package barrier

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

const (
	// KeySize is the size of the root key and of every barrier key.
	KeySize = 32
	// ReservedPrefix is the key prefix the barrier and the seal keep for
	// themselves in the raw store; the view rejects keys under it.
	ReservedPrefix = "core/"
	// KeyringKey is where the wrapped keyring lives in the raw store.
	KeyringKey = "core/keyring"

	formatV1   = 1
	headerSize = 5
	nonceSize  = 12
	tagSize    = 16
	deriveInfo = "ward barrier derived key v1\x00"
)

// Sentinel errors; returned errors wrap them for errors.Is.
var (
	// ErrSealed: the barrier holds no keys; unseal it first.
	ErrSealed = errors.New("barrier is sealed: unseal it (submit unseal shares or auto-unseal) and retry")
	// ErrBadRootKey: the root key does not open the stored keyring.
	ErrBadRootKey = errors.New("root key does not open the keyring at " + KeyringKey + ": it is the wrong root key, or the stored keyring was altered")
	// ErrNotInitialized: there is no keyring in the store yet.
	ErrNotInitialized = errors.New("barrier is not initialised: no keyring at " + KeyringKey + "; initialise the authority first")
	// ErrAlreadyInitialized: a keyring already exists; nothing was written.
	ErrAlreadyInitialized = errors.New("barrier is already initialised: a keyring exists at " + KeyringKey + "; nothing was changed")
	// ErrAuth: a stored value failed authentication.
	ErrAuth = errors.New("failed authentication: altered, moved or written by another keyring")
	// ErrReservedKey: the key is under ReservedPrefix.
	ErrReservedKey = errors.New("keys under \"" + ReservedPrefix + "\" are reserved for the barrier and seal; use another prefix")
)

// keyringJSON is the plaintext keyring, only ever stored encrypted.
type keyringJSON struct {
	Version    int       `json:"version"`
	ActiveTerm uint32    `json:"active_term"`
	Keys       []keyJSON `json:"keys"`
	// DeriveSecret seeds DeriveKey. It is separate from the barrier keys
	// so derived keys stay stable when barrier keys rotate.
	DeriveSecret []byte `json:"derive_secret"`
}

type keyJSON struct {
	Term    uint32    `json:"term"`
	Key     []byte    `json:"key"`
	Created time.Time `json:"created"`
}

// Barrier owns the keyring and encrypts everything written through Store.
// It is safe for concurrent use.
type Barrier struct {
	raw store.Store

	mu       sync.RWMutex
	aeads    map[uint32]cipher.AEAD // nil while sealed
	keys     [][]byte               // key material, zeroed on Seal
	active   uint32
	derive   []byte
	sealedCh chan struct{} // closed by Seal; wakes watchers
	// root is the root key while unsealed (zeroed on Seal): rotation
	// rewraps the keyring with it and a keyring rotated by another
	// authority is re-read with it. keyringRev is the stored keyring's
	// revision when it was loaded.
	root       []byte
	keyringRev int64
	// reloadMu serialises keyring changes and reloads.
	reloadMu sync.Mutex
}

// New returns a sealed barrier over raw, which it does not own (closing it
// is the caller's job).
func New(raw store.Store) *Barrier {
	return &Barrier{raw: raw}
}

// Initialized reports whether a keyring exists in the store.
func (b *Barrier) Initialized(ctx context.Context) (bool, error) {
	_, err := b.raw.Get(ctx, KeyringKey)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("barrier: reading %s: %w", KeyringKey, err)
}

// Initialize creates a keyring with one barrier key (term 1), wraps it
// under rootKey and writes it to KeyringKey, only if no keyring exists.
// The ops in with are written in the same atomic batch (the seal uses this
// to store its configuration), so either all land or none. It does not
// unseal the barrier and does not keep rootKey.
func (b *Barrier) Initialize(ctx context.Context, rootKey []byte, with ...store.Op) error {
	if len(rootKey) != KeySize {
		return fmt.Errorf("barrier: root key is %d bytes, want %d", len(rootKey), KeySize)
	}
	for _, op := range with {
		if op.Key == KeyringKey {
			return fmt.Errorf("barrier: extra op for %s would overwrite the keyring", KeyringKey)
		}
	}
	kr := keyringJSON{
		Version:      1,
		ActiveTerm:   1,
		Keys:         []keyJSON{{Term: 1, Key: randomKey(), Created: time.Now().UTC()}},
		DeriveSecret: randomKey(),
	}
	defer kr.zero()
	pt, err := json.Marshal(kr)
	if err != nil {
		return fmt.Errorf("barrier: encoding keyring: %w", err)
	}
	defer clear(pt)
	rootAEAD, err := newAEAD(rootKey)
	if err != nil {
		return err
	}
	blob := sealValue(rootAEAD, 0, KeyringKey, pt)
	ops := append([]store.Op{{Key: KeyringKey, Value: blob, ExpectRevision: 0}}, with...)
	if _, err := b.raw.Batch(ctx, ops); err != nil {
		if errors.Is(err, store.ErrConflict) {
			if len(with) > 0 {
				return fmt.Errorf("barrier: %w (or one of the %d keys written with it already exists)", ErrAlreadyInitialized, len(with))
			}
			return fmt.Errorf("barrier: %w", ErrAlreadyInitialized)
		}
		return fmt.Errorf("barrier: writing keyring to %s: %w; nothing was written", KeyringKey, err)
	}
	return nil
}

// Unseal reads the keyring, opens it with rootKey and loads the barrier
// keys. A wrong root key returns an error wrapping ErrBadRootKey and leaves
// the barrier exactly as it was (sealed or unsealed). A copy of rootKey is
// kept in memory until Seal (barrier rotation rewraps the keyring with it).
func (b *Barrier) Unseal(ctx context.Context, rootKey []byte) error {
	if len(rootKey) != KeySize {
		return fmt.Errorf("barrier: %w (root key is %d bytes, want %d)", ErrBadRootKey, len(rootKey), KeySize)
	}
	kv, err := b.raw.Get(ctx, KeyringKey)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("barrier: %w", ErrNotInitialized)
		}
		return fmt.Errorf("barrier: reading %s: %w", KeyringKey, err)
	}
	kr, err := openKeyring(rootKey, kv.Value)
	if err != nil {
		return err
	}
	defer kr.zero()
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.installLocked(kr, kv.Revision, rootKey); err != nil {
		return err
	}
	if b.sealedCh == nil {
		b.sealedCh = make(chan struct{})
	}
	return nil
}

// openKeyring opens a stored keyring with rootKey and checks it.
func openKeyring(rootKey, blob []byte) (*keyringJSON, error) {
	rootAEAD, err := newAEAD(rootKey)
	if err != nil {
		return nil, err
	}
	term, pt, err := openValue(func(uint32) cipher.AEAD { return rootAEAD }, KeyringKey, blob)
	if err != nil || term != 0 {
		return nil, fmt.Errorf("barrier: %w", ErrBadRootKey)
	}
	defer clear(pt)
	var kr keyringJSON
	if err := json.Unmarshal(pt, &kr); err != nil {
		return nil, fmt.Errorf("barrier: keyring at %s opened but does not decode (%v); it was written by an incompatible version", KeyringKey, err)
	}
	if kr.Version != 1 || len(kr.DeriveSecret) != KeySize {
		kr.zero()
		return nil, fmt.Errorf("barrier: keyring at %s has version %d or a bad derivation secret; it was written by an incompatible version", KeyringKey, kr.Version)
	}
	return &kr, nil
}

// installLocked makes kr the keyring in memory (b.mu held). rev is the
// stored keyring's revision; rootKey is kept (cloned) so the keyring can
// be rewritten (barrier rotation) and re-read (rotation by another
// authority) while unsealed.
func (b *Barrier) installLocked(kr *keyringJSON, rev int64, rootKey []byte) error {
	aeads := make(map[uint32]cipher.AEAD, len(kr.Keys))
	var keys [][]byte
	for _, k := range kr.Keys {
		if k.Term == 0 || len(k.Key) != KeySize {
			return fmt.Errorf("barrier: keyring at %s holds a malformed key for term %d", KeyringKey, k.Term)
		}
		a, err := newAEAD(k.Key)
		if err != nil {
			return err
		}
		aeads[k.Term] = a
		keys = append(keys, bytes.Clone(k.Key))
	}
	if aeads[kr.ActiveTerm] == nil {
		return fmt.Errorf("barrier: keyring at %s names active term %d but holds no key for it", KeyringKey, kr.ActiveTerm)
	}
	root := bytes.Clone(rootKey)
	b.zeroLocked()
	b.aeads, b.keys, b.active, b.derive = aeads, keys, kr.ActiveTerm, bytes.Clone(kr.DeriveSecret)
	b.root, b.keyringRev = root, rev
	return nil
}

// Seal drops and zeroes the keys held in memory and ends watches made
// through views. Operations already past their key lookup finish. The AES
// key schedules inside the dropped cipher objects cannot be zeroed from Go;
// they become garbage.
func (b *Barrier) Seal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.zeroLocked()
	if b.sealedCh != nil {
		close(b.sealedCh)
		b.sealedCh = nil
	}
}

func (b *Barrier) zeroLocked() {
	for _, k := range b.keys {
		clear(k)
	}
	clear(b.derive)
	clear(b.root)
	b.aeads, b.keys, b.active, b.derive = nil, nil, 0, nil
	b.root, b.keyringRev = nil, 0
}

// Sealed reports whether the barrier holds no keys.
func (b *Barrier) Sealed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.aeads == nil
}

// DeriveKey returns a 32-byte key for purpose (e.g. "audit hmac", "path
// hmac"), derived with HKDF-SHA256 from a keyring secret: the same purpose
// gives the same key across restarts and barrier key rotations; distinct
// purposes give independent keys.
func (b *Barrier) DeriveKey(purpose string) ([]byte, error) {
	if purpose == "" {
		return nil, errors.New("barrier: DeriveKey needs a non-empty purpose naming what the key is for")
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.aeads == nil {
		return nil, fmt.Errorf("barrier: deriving key for %q: %w", purpose, ErrSealed)
	}
	return hkdf.Key(sha256.New, b.derive, nil, deriveInfo+purpose, KeySize)
}

// Store returns a view of the raw store in which every value is encrypted.
// Each call returns a new view; closing a view ends it and its watches but
// does not close the raw store.
func (b *Barrier) Store() store.Store {
	return &view{b: b, done: make(chan struct{})}
}

// active returns the encryption AEAD and its term, or ErrSealed.
func (b *Barrier) activeAEAD() (cipher.AEAD, uint32, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.aeads == nil {
		return nil, 0, ErrSealed
	}
	return b.aeads[b.active], b.active, nil
}

// lookup returns a term→AEAD function bound to the current keyring, or
// ErrSealed.
func (b *Barrier) lookup() (func(uint32) cipher.AEAD, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.aeads == nil {
		return nil, ErrSealed
	}
	m := b.aeads
	return func(t uint32) cipher.AEAD {
		if a := m[t]; a != nil || t == 0 {
			return a
		}
		return b.reloadFor(t)
	}, nil
}

func (b *Barrier) sealedChan() (<-chan struct{}, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.aeads == nil {
		return nil, ErrSealed
	}
	return b.sealedCh, nil
}

func (kr *keyringJSON) zero() {
	for _, k := range kr.Keys {
		clear(k.Key)
	}
	clear(kr.DeriveSecret)
}

func randomKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k) // never fails (crypto/rand panics rather than return short)
	return k
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("barrier: preparing AES key: %w", err)
	}
	a, err := cipher.NewGCMWithRandomNonce(blk)
	if err != nil {
		return nil, fmt.Errorf("barrier: preparing AES-GCM: %w", err)
	}
	return a, nil
}

func header(term uint32) [headerSize]byte {
	var h [headerSize]byte
	h[0] = formatV1
	binary.BigEndian.PutUint32(h[1:], term)
	return h
}

func aad(h []byte, key string) []byte {
	a := make([]byte, 0, len(h)+len(key))
	return append(append(a, h...), key...)
}

// sealValue encrypts pt for storage key under term.
func sealValue(a cipher.AEAD, term uint32, key string, pt []byte) []byte {
	h := header(term)
	out := make([]byte, 0, sealedSize(pt))
	out = append(out, h[:]...)
	return a.Seal(out, nil, pt, aad(h[:], key))
}

// sealedSize is the length of pt sealed.
func sealedSize(pt []byte) int { return headerSize + nonceSize + len(pt) + tagSize }

// appendSealed appends pt sealed for key under term to dst, building the
// additional data in scratch (returned for reuse: the AEAD keeps none of
// it); a batch seals all its values into one buffer this way.
func appendSealed(dst, scratch []byte, a cipher.AEAD, term uint32, key string, pt []byte) (out, aadBuf []byte) {
	h := header(term)
	scratch = append(append(scratch[:0], h[:]...), key...)
	dst = append(dst, h[:]...)
	return a.Seal(dst, nil, pt, scratch), scratch
}

// openValue authenticates and decrypts a stored value for key. It never
// panics on arbitrary input.
func openValue(lookup func(uint32) cipher.AEAD, key string, v []byte) (uint32, []byte, error) {
	if len(v) < headerSize+nonceSize+tagSize || v[0] != formatV1 {
		return 0, nil, fmt.Errorf("barrier: stored value for %q %w (not a barrier value: too short or unknown format)", key, ErrAuth)
	}
	term := binary.BigEndian.Uint32(v[1:headerSize])
	a := lookup(term)
	if a == nil {
		return term, nil, fmt.Errorf("barrier: stored value for %q was written under keyring term %d, which this keyring does not hold; if another authority rotated the keyring, seal and unseal to reload it, otherwise it %w", key, term, ErrAuth)
	}
	pt, err := a.Open(nil, nil, v[headerSize:], aad(v[:headerSize], key))
	if err != nil {
		return term, nil, fmt.Errorf("barrier: stored value for %q %w", key, ErrAuth)
	}
	if pt == nil {
		pt = []byte{}
	}
	return term, pt, nil
}

func reserved(key string) bool { return strings.HasPrefix(key, ReservedPrefix) }

// ValueTerm returns the keyring term named in the header of a stored
// barrier value (0: wrapped under the root key, the keyring), without
// decrypting it; ok is false if v is not a barrier value.
func ValueTerm(v []byte) (term uint32, ok bool) {
	if len(v) < headerSize+nonceSize+tagSize || v[0] != formatV1 {
		return 0, false
	}
	return binary.BigEndian.Uint32(v[1:headerSize]), true
}
