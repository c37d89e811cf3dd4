// Package kmscrypto seals and opens ward KMS ciphertexts (format in
// internal/shared/kmsfmt) with one key version's material. It holds the only AEAD
// constructions the KMS uses, all from the standard library and all
// FIPS 140-3 approved: AES-256-GCM with a module-generated random nonce,
// and the same preceded by a per-message HKDF-SHA256 subkey. A third
// algorithm, aes-256-gcm-hsm, runs AES-256-GCM inside a PKCS#11 HSM: its
// versions have no material here, only an External (the HSM's key).
package kmscrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// KeySize is the size of every version key.
const KeySize = 32

const (
	saltSize = 32
	hkdfInfo = "ward kms v1 message key"
)

// ErrAuth means the ciphertext, its header or the encryption context were
// altered, or the wrong key was used. Deliberately says nothing more.
var ErrAuth = errors.New("ciphertext failed authentication: it was altered or truncated, the encryption context differs from the one used to encrypt, or it was made by another key")

// Version is one key version prepared for use: safe for concurrent use.
type Version struct {
	alg  kmsfmt.Alg
	aead cipher.AEAD // AlgAES256GCM
	prk  []byte      // AlgAES256GCMHKDF: HKDF-Extract of the version key
	ext  External    // AlgAES256GCMHSM: the key is in an HSM
	// scratch holds *scratch values: per-call buffers, and for
	// AlgAES256GCMHKDF an HMAC-SHA256 keyed with prk, so that a message
	// key costs no allocation (messageKey).
	scratch sync.Pool
}

// scratch is what one Encrypt or Decrypt call borrows from its Version.
type scratch struct {
	aad []byte    // header || canonical encryption context
	mac hash.Hash // HMAC-SHA256 keyed with the version's PRK (HKDF only)
	sum [2 * sha256.Size]byte
	key [KeySize]byte
}

// maxScratchAAD bounds the AAD buffer kept for reuse (larger encryption
// contexts get a fresh one that is not kept).
const maxScratchAAD = 4 << 10

func (v *Version) getScratch() *scratch {
	if s, ok := v.scratch.Get().(*scratch); ok {
		return s
	}
	s := &scratch{aad: make([]byte, 0, 256)}
	if v.prk != nil {
		s.mac = hmac.New(sha256.New, v.prk)
	}
	return s
}

func (v *Version) putScratch(s *scratch) {
	clear(s.key[:])
	clear(s.sum[:])
	if cap(s.aad) > maxScratchAAD {
		return
	}
	s.aad = s.aad[:0]
	v.scratch.Put(s)
}

// aad returns header || canonical encryption context in s's buffer.
func (s *scratch) aadOf(rawHeader []byte, encCtx map[string]string) []byte {
	s.aad = kmsfmt.AppendContext(append(s.aad[:0], rawHeader...), encCtx)
	return s.aad
}

// External is an AEAD whose key is held outside the process (a PKCS#11
// HSM). Seal picks a fresh nonce and returns nonce || ciphertext || tag;
// both may fail (the HSM is unreachable). Open reports an authentication
// failure with an error wrapping ErrAuth.
type External interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(payload, aad []byte) ([]byte, error)
}

// NewExternalVersion prepares a version whose key is held in an HSM.
func NewExternalVersion(alg kmsfmt.Alg, x External) (*Version, error) {
	if alg != kmsfmt.AlgAES256GCMHSM {
		return nil, fmt.Errorf("algorithm %s keeps its key in ward, not in an HSM", alg)
	}
	if x == nil {
		return nil, errors.New("no HSM key")
	}
	return &Version{alg: alg, ext: x}, nil
}

// NewVersion prepares key material for alg. The key is copied.
func NewVersion(alg kmsfmt.Alg, key []byte) (*Version, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("key version material is %d bytes, want %d", len(key), KeySize)
	}
	v := &Version{alg: alg}
	switch alg {
	case kmsfmt.AlgAES256GCM:
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		if v.aead, err = cipher.NewGCMWithRandomNonce(b); err != nil {
			return nil, err
		}
	case kmsfmt.AlgAES256GCMHKDF:
		prk, err := hkdf.Extract(sha256.New, key, nil)
		if err != nil {
			return nil, err
		}
		v.prk = prk
	case kmsfmt.AlgAES256GCMHSM:
		return nil, fmt.Errorf("algorithm %s keeps its key in an HSM: it has no material in ward", alg)
	default:
		return nil, fmt.Errorf("algorithm %s is not supported", alg)
	}
	return v, nil
}

// Alg returns the version's algorithm.
func (v *Version) Alg() kmsfmt.Alg { return v.alg }

// Encrypt returns header(h) || payload for plaintext, bound to encCtx.
// h.Alg is overwritten with the version's algorithm.
func (v *Version) Encrypt(h kmsfmt.Header, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	h.Alg = v.alg
	// Header, salt, nonce, plaintext and tag: Seal never grows it.
	out := kmsfmt.AppendHeader(make([]byte, 0, headerMax+len(h.KeyName)+saltSize+gcmNonce+len(plaintext)+gcmTag), h)
	if v.ext != nil {
		// A fresh AAD: the HSM's client gets its own copy to keep.
		ct, err := v.ext.Seal(plaintext, kmsfmt.AAD(out, encCtx))
		if err != nil {
			return nil, err
		}
		return append(out, ct...), nil
	}
	s := v.getScratch()
	defer v.putScratch(s)
	aad := s.aadOf(out, encCtx)
	switch v.alg {
	case kmsfmt.AlgAES256GCM:
		return v.aead.Seal(out, nil, plaintext, aad), nil
	case kmsfmt.AlgAES256GCMHKDF:
		n := len(out)
		out = out[:n+saltSize]
		rand.Read(out[n:])
		aead, err := v.messageAEAD(s, out[n:])
		if err != nil {
			return nil, err
		}
		return aead.Seal(out, nil, plaintext, aad), nil
	}
	return nil, fmt.Errorf("algorithm %s is not supported", v.alg)
}

// Decrypt opens the payload of a parsed ciphertext. rawHeader must be the
// header bytes returned by kmsfmt.Parse for the same ciphertext.
func (v *Version) Decrypt(h kmsfmt.Header, rawHeader, payload []byte, encCtx map[string]string) ([]byte, error) {
	if h.Alg != v.alg {
		return nil, fmt.Errorf("ciphertext says algorithm %s but key %s version %d uses %s", h.Alg, h.KeyName, h.Version, v.alg)
	}
	if v.ext != nil {
		pt, err := v.ext.Open(payload, kmsfmt.AAD(rawHeader, encCtx))
		if err != nil && errors.Is(err, ErrAuth) {
			return nil, ErrAuth
		}
		return pt, err
	}
	s := v.getScratch()
	defer v.putScratch(s)
	aad := s.aadOf(rawHeader, encCtx)
	aead := v.aead
	if v.alg == kmsfmt.AlgAES256GCMHKDF {
		if len(payload) < saltSize {
			return nil, ErrAuth
		}
		var err error
		if aead, err = v.messageAEAD(s, payload[:saltSize]); err != nil {
			return nil, err
		}
		payload = payload[saltSize:]
	}
	if len(payload) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrAuth
	}
	pt, err := aead.Open(nil, nil, payload, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

// Sizes of the parts of a ciphertext around the plaintext: the header
// without its key name (at most), the nonce and the tag of AES-GCM.
const (
	headerMax = 16
	gcmNonce  = 12
	gcmTag    = 16
)

// messageAEAD returns AES-256-GCM under the message key of salt
// (messageKey).
func (v *Version) messageAEAD(s *scratch, salt []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(v.messageKey(s, salt))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(b)
}

// messageKey derives the message key of salt into s.key: HKDF-SHA256
// (RFC 5869) Expand of the version's PRK with info = hkdfInfo || salt to
// KeySize bytes. For one block of output (KeySize = SHA-256's size) Expand
// is T(1) = HMAC-SHA256(PRK, info || 0x01), which is what this computes,
// with crypto/hmac keyed once per version and Reset per message, instead
// of crypto/hkdf.Expand building a new HMAC (and a dozen allocations) on
// every call. TestMessageKeyIsHKDFExpand holds it equal to crypto/hkdf.
func (v *Version) messageKey(s *scratch, salt []byte) []byte {
	s.mac.Reset()
	s.mac.Write(hkdfInfoBytes)
	s.mac.Write(salt)
	s.mac.Write(hkdfCounter1)
	copy(s.key[:], s.mac.Sum(s.sum[:0]))
	return s.key[:]
}

var (
	hkdfInfoBytes = []byte(hkdfInfo)
	hkdfCounter1  = []byte{1}
)

// NewKey returns fresh random key material.
func NewKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}
