package kms

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// HSM holds the key versions of hardware-backed classifications. Each
// version is an AES-256 key generated inside the HSM, sensitive and never
// extractable; the key record stores only its label. Every encryption
// (data keys included) and decryption under it runs in the HSM.
type HSM interface {
	// GenerateKey creates a non-extractable AES-256 key labelled label.
	GenerateKey(label string) error
	// Key returns the key labelled label, to encrypt and decrypt with.
	Key(label string) (kmscrypto.External, error)
	// DestroyKey deletes the key labelled label (crypto-shredding).
	DestroyKey(label string) error
}

// WithHSM lets hardware-backed classifications keep their keys in h (the
// authority's PKCS#11 seal token). Without it, creating a key of such a
// classification fails and existing HSM-held versions are unavailable.
func WithHSM(h HSM) Option { return func(m *Manager) { m.hsm = h } }

// hsmLabelPrefix starts the label of every HSM key ward creates; the rest
// is random, so labels say nothing about key names.
const hsmLabelPrefix = "ward-kms-"

func (m *Manager) noHSM(classification string) error {
	return errs.Errorf(errs.Precondition, "classification %q is hardware-backed: its keys are generated and used inside an HSM, and this authority has none (its seal is not the PKCS#11 seal, or the HSM was unreachable at unseal). Configure seal.type pkcs11 (docs/hsm.md) or choose a classification that is not hardware-backed", classification)
}

// newHSMKey generates a fresh key in the HSM and returns its label.
func (m *Manager) newHSMKey(classification string) (string, error) {
	if m.hsm == nil {
		return "", m.noHSM(classification)
	}
	var b [16]byte
	rand.Read(b[:])
	label := hsmLabelPrefix + hex.EncodeToString(b[:])
	if err := m.hsm.GenerateKey(label); err != nil {
		return "", errs.Errorf(errs.Unavailable, "generating the key in the HSM: %v", err)
	}
	return label, nil
}

// dropHSMKey deletes an HSM key that no stored record names (a create or
// rotation that did not commit) or that was destroyed.
func (m *Manager) dropHSMKey(label string) error {
	if label == "" || m.hsm == nil {
		return nil
	}
	if err := m.hsm.DestroyKey(label); err != nil {
		m.log.Error("kms: could not delete a key from the HSM", "hsm_key", label, "err", err)
		return err
	}
	return nil
}

// hsmVersion prepares an HSM-held version.
func (m *Manager) hsmVersion(name string, v VersionRecord) (*kmscrypto.Version, error) {
	if v.HSMKey == "" || v.Alg != kmsfmt.AlgAES256GCMHSM.String() {
		return nil, errs.Errorf(errs.Unavailable, "key %q version %d: the stored record is inconsistent (algorithm %s, HSM key %q)", name, v.Version, v.Alg, v.HSMKey)
	}
	if m.hsm == nil {
		return nil, errs.Errorf(errs.Unavailable, "key %q version %d is held in an HSM, and this authority has none (its seal is not the PKCS#11 seal, or the HSM was unreachable at unseal): configure the PKCS#11 seal with the token that holds it (docs/hsm.md)", name, v.Version)
	}
	x, err := m.hsm.Key(v.HSMKey)
	if err != nil {
		return nil, errs.Errorf(errs.Unavailable, "key %q version %d: %v", name, v.Version, err)
	}
	return kmscrypto.NewExternalVersion(kmsfmt.AlgAES256GCMHSM, x)
}

// newVersionRecord makes version nv of classification c: a fresh key in
// the HSM for hardware-backed rows, fresh material otherwise.
func (m *Manager) newVersionRecord(c Classification, nv uint32, now time.Time) (VersionRecord, error) {
	vr := VersionRecord{Version: nv, State: StateEnabled, Alg: c.Algorithm.String(), Created: now, StateChanged: now}
	if !c.HardwareBacked {
		vr.Material = kmscrypto.NewKey()
		return vr, nil
	}
	label, err := m.newHSMKey(c.Name)
	if err != nil {
		return VersionRecord{}, err
	}
	vr.HSMKey = label
	return vr, nil
}
