package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// usable checks that version v of l may decrypt.
func usable(l *loaded, v uint32) (*kmscrypto.Version, error) {
	rec := &l.rec
	name := rec.Name
	vr := rec.version(v)
	if vr == nil {
		return nil, errs.Errorf(errs.NotFound, "key %q has no version %d (latest is %d): the ciphertext was not made by this key", name, v, rec.Latest())
	}
	switch vr.State {
	case StateDestroyed:
		return nil, errs.Errorf(errs.Precondition, "key %q version %d was destroyed: data encrypted under it can never be decrypted again", name, v)
	case StateDisabled:
		return nil, errs.Errorf(errs.Precondition, "key %q version %d is disabled: enable it with `ward key enable %s --version %d` to decrypt", name, v, name, v)
	}
	if v < rec.MinDecryptVersion {
		return nil, errs.Errorf(errs.Precondition, "key %q version %d is below its min-decrypt-version %d: lower it with `ward key config %s --min-decrypt-version %d`", name, v, rec.MinDecryptVersion, name, v)
	}
	kv := l.versions[v]
	if kv == nil {
		if err := l.unavailable[v]; err != nil {
			return nil, err
		}
		return nil, errs.Errorf(errs.Unavailable, "key %q version %d has no material", name, v)
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
	if err := l.unavailable[latest]; err != nil {
		return nil, 0, err
	}
	if kv == nil || l.rec.Versions[latest-1].State != StateEnabled {
		return nil, 0, errs.Errorf(errs.Precondition, "key %q: the latest version %d is not usable: rotate the key", name, latest)
	}
	ct, err := kv.Encrypt(kmsfmt.Header{KeyName: name, Version: latest}, plaintext, encCtx)
	if err != nil {
		if kv.Alg() == kmsfmt.AlgAES256GCMHSM {
			return nil, 0, errs.Errorf(errs.Unavailable, "encrypting with key %q version %d in the HSM: %v", name, latest, err)
		}
		return nil, 0, errs.Errorf(errs.Invalid, "encrypting with key %q: %v", name, err)
	}
	return ct, latest, nil
}

func (m *Manager) decryptRaw(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, kmsfmt.Header, error) {
	ct, err := kmsfmt.Dearmor(ciphertext)
	if err != nil {
		return nil, kmsfmt.Header{}, errs.Errorf(errs.Invalid, "%v", err)
	}
	h, raw, payload, err := kmsfmt.Parse(ct)
	if err != nil {
		return nil, h, errs.Errorf(errs.Invalid, "%v", err)
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
			return nil, h, errs.Errorf(errs.Denied, "key %q version %d: %v", h.KeyName, h.Version, err)
		}
		if kv.Alg() == kmsfmt.AlgAES256GCMHSM {
			return nil, h, errs.Errorf(errs.Unavailable, "decrypting with key %q version %d in the HSM: %v", h.KeyName, h.Version, err)
		}
		return nil, h, errs.Errorf(errs.Invalid, "%v", err)
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
		err = errs.Errorf(errs.Invalid, "plaintext is %d bytes; the KMS encrypts at most %d: use `ward encrypt` (envelope encryption) for larger data", len(plaintext), MaxPlaintext)
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
		return 0, errs.Errorf(errs.Invalid, "data key size %d is out of range: use 16..64 bytes (default 32)", size)
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
