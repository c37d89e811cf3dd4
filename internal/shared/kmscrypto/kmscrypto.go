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
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

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
	out := kmsfmt.AppendHeader(make([]byte, 0, 64+len(h.KeyName)+len(plaintext)), h)
	aad := kmsfmt.AAD(out, encCtx)
	switch v.alg {
	case kmsfmt.AlgAES256GCM:
		return v.aead.Seal(out, nil, plaintext, aad), nil
	case kmsfmt.AlgAES256GCMHKDF:
		var salt [saltSize]byte
		rand.Read(salt[:])
		aead, err := v.messageAEAD(salt[:])
		if err != nil {
			return nil, err
		}
		out = append(out, salt[:]...)
		return aead.Seal(out, nil, plaintext, aad), nil
	case kmsfmt.AlgAES256GCMHSM:
		ct, err := v.ext.Seal(plaintext, aad)
		if err != nil {
			return nil, err
		}
		return append(out, ct...), nil
	}
	return nil, fmt.Errorf("algorithm %s is not supported", v.alg)
}

// Decrypt opens the payload of a parsed ciphertext. rawHeader must be the
// header bytes returned by kmsfmt.Parse for the same ciphertext.
func (v *Version) Decrypt(h kmsfmt.Header, rawHeader, payload []byte, encCtx map[string]string) ([]byte, error) {
	if h.Alg != v.alg {
		return nil, fmt.Errorf("ciphertext says algorithm %s but key %s version %d uses %s", h.Alg, h.KeyName, h.Version, v.alg)
	}
	aad := kmsfmt.AAD(rawHeader, encCtx)
	if v.ext != nil {
		pt, err := v.ext.Open(payload, aad)
		if err != nil && errors.Is(err, ErrAuth) {
			return nil, ErrAuth
		}
		return pt, err
	}
	aead := v.aead
	if v.alg == kmsfmt.AlgAES256GCMHKDF {
		if len(payload) < saltSize {
			return nil, ErrAuth
		}
		var err error
		if aead, err = v.messageAEAD(payload[:saltSize]); err != nil {
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

func (v *Version) messageAEAD(salt []byte) (cipher.AEAD, error) {
	info := make([]byte, 0, len(hkdfInfo)+saltSize)
	info = append(append(info, hkdfInfo...), salt...)
	mk, err := hkdf.Expand(sha256.New, v.prk, string(info), KeySize)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(mk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(b)
}

// NewKey returns fresh random key material.
func NewKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}
