package kmscrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

type extAEAD struct{ a cipher.AEAD }

func (e extAEAD) Seal(pt, aad []byte) ([]byte, error) { return e.a.Seal(nil, nil, pt, aad), nil }
func (e extAEAD) Open(ct, aad []byte) ([]byte, error) {
	pt, err := e.a.Open(nil, nil, ct, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

type brokenHSM struct{}

func (brokenHSM) Seal(_, _ []byte) ([]byte, error) { return nil, errors.New("HSM: token removed") }
func (brokenHSM) Open(_, _ []byte) ([]byte, error) { return nil, errors.New("HSM: token removed") }

func TestExternalVersion(t *testing.T) {
	if _, err := NewVersion(kmsfmt.AlgAES256GCMHSM, NewKey()); err == nil {
		t.Fatal("material accepted for an HSM algorithm")
	}
	if _, err := NewExternalVersion(kmsfmt.AlgAES256GCMHKDF, brokenHSM{}); err == nil {
		t.Fatal("an external key accepted for a software algorithm")
	}
	b, _ := aes.NewCipher(NewKey())
	a, _ := cipher.NewGCMWithRandomNonce(b)
	v, err := NewExternalVersion(kmsfmt.AlgAES256GCMHSM, extAEAD{a})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := v.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, []byte("pt"), map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	h, raw, payload, err := kmsfmt.Parse(ct)
	if err != nil || h.Alg != kmsfmt.AlgAES256GCMHSM {
		t.Fatalf("parse: %v %v", h, err)
	}
	if pt, err := v.Decrypt(h, raw, payload, map[string]string{"a": "b"}); err != nil || string(pt) != "pt" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	if _, err := v.Decrypt(h, raw, payload, nil); !errors.Is(err, ErrAuth) {
		t.Fatalf("decrypt with another context: %v", err)
	}
	bv, _ := NewExternalVersion(kmsfmt.AlgAES256GCMHSM, brokenHSM{})
	if _, err := bv.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, []byte("pt"), nil); err == nil {
		t.Fatal("encrypt with a failing HSM succeeded")
	}
	if _, err := bv.Decrypt(h, raw, payload, nil); err == nil || errors.Is(err, ErrAuth) {
		t.Fatalf("a failing HSM reported as an authentication failure: %v", err)
	}
}
