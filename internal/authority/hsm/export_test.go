//go:build cgo

package hsm

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// Test-only ways to try to get a key's value out of the token, as anyone
// logged in to it could.

// ValueOf reads the key's CKA_VALUE.
func ValueOf(t *Token, label string) ([]byte, error) {
	var v []byte
	err := t.with(func(sh pkcs11.SessionHandle) error {
		obj, ok, err := t.find(sh, label)
		if err != nil || !ok {
			return fmt.Errorf("no key %q: %v", label, err)
		}
		attrs, err := t.ctx.GetAttributeValue(sh, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		v = attrs[0].Value
		return nil
	})
	return v, err
}

// WrapWith exports key label wrapped under key wrapper (CKM_AES_KEY_WRAP_PAD).
func WrapWith(t *Token, wrapper, label string) ([]byte, error) {
	var out []byte
	err := t.with(func(sh pkcs11.SessionHandle) error {
		w, ok, err := t.find(sh, wrapper)
		if err != nil || !ok {
			return fmt.Errorf("no key %q: %v", wrapper, err)
		}
		k, ok, err := t.find(sh, label)
		if err != nil || !ok {
			return fmt.Errorf("no key %q: %v", label, err)
		}
		out, err = t.ctx.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, w, k)
		return err
	})
	return out, err
}

// GenerateExportable makes an AES-256 key that is extractable and not
// sensitive, and may wrap others: the control for the tests above.
func GenerateExportable(t *Token, label string) error {
	return t.with(func(sh pkcs11.SessionHandle) error {
		_, err := t.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		return err
	})
}
