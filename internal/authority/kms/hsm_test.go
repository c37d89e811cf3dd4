package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// fakeHSM keeps keys in a map the KMS cannot reach: it sees labels only.
// The real PKCS#11 token is tested in internal/authority/hsm and, end to
// end through the API, in internal/authority/server.
type fakeHSM struct {
	mu       sync.Mutex
	keys     map[string][]byte
	failGen  bool
	destroys []string
}

func (f *fakeHSM) GenerateKey(label string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failGen {
		return errors.New("HSM: token removed")
	}
	if f.keys == nil {
		f.keys = map[string][]byte{}
	}
	f.keys[label] = kmscrypto.NewKey()
	return nil
}

func (f *fakeHSM) Key(label string) (kmscrypto.External, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[label]
	if !ok {
		return nil, fmt.Errorf("HSM: no key labelled %q", label)
	}
	b, _ := aes.NewCipher(k)
	a, _ := cipher.NewGCMWithRandomNonce(b)
	return fakeKey{a}, nil
}

func (f *fakeHSM) DestroyKey(label string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, label)
	f.destroys = append(f.destroys, label)
	return nil
}

type fakeKey struct{ a cipher.AEAD }

func (k fakeKey) Seal(pt, aad []byte) ([]byte, error) { return k.a.Seal(nil, nil, pt, aad), nil }
func (k fakeKey) Open(ct, aad []byte) ([]byte, error) {
	pt, err := k.a.Open(nil, nil, ct, aad)
	if err != nil {
		return nil, kmscrypto.ErrAuth
	}
	return pt, nil
}

func hsmTable() Table {
	t := DefaultTable()
	t["hsm"] = Classification{Name: "hsm", Algorithm: kmsfmt.AlgAES256GCMHSM, RotationPeriod: 30 * day, KeepVersions: 2, HardwareBacked: true}
	return t
}

func TestHardwareBackedKeys(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	h := &fakeHSM{}
	m, err := New(st, bytes.Repeat([]byte{7}, 32), hsmTable(), &recorder{}, WithHSM(h))
	if err != nil {
		t.Fatal(err)
	}
	v, err := m.Create(ctx, "t/hsm", "hsm", "")
	if err != nil {
		t.Fatal(err)
	}
	if v.Algorithm != "aes-256-gcm-hsm" || len(h.keys) != 1 {
		t.Fatalf("view %+v, %d HSM keys", v, len(h.keys))
	}
	ct, _, err := m.Encrypt(ctx, "t/hsm", []byte("pt"), map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if h, _, _, _ := kmsfmt.Parse(ct); h.Alg != kmsfmt.AlgAES256GCMHSM {
		t.Fatalf("ciphertext alg %v", h.Alg)
	}
	if _, _, err := m.Decrypt(ctx, ct, map[string]string{"a": "c"}); errs.KindOf(err) != errs.Denied {
		t.Fatalf("decrypt with another context: %v", err)
	}
	dk, err := m.GenerateDataKey(ctx, "t/hsm", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Rotate(ctx, "t/hsm"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Rotate(ctx, "t/hsm"); err != nil {
		t.Fatal(err)
	}
	// Version 1 is disabled (keep 2), not destroyed: its HSM key stays.
	if _, err := m.SetEnabled(ctx, "t/hsm", 1, true); err != nil {
		t.Fatal(err)
	}
	pt, _, err := m.Decrypt(ctx, dk.Wrapped, nil)
	if err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("data key after rotation: %v", err)
	}
	// The stored record holds labels only, one HSM key per version.
	kv, err := st.Get(ctx, m.path("t/hsm"))
	if err != nil {
		t.Fatal(err)
	}
	var rec KeyRecord
	json.Unmarshal(kv.Value, &rec)
	labels := map[string]bool{}
	for _, vr := range rec.Versions {
		if vr.Material != nil || !strings.HasPrefix(vr.HSMKey, hsmLabelPrefix) || labels[vr.HSMKey] {
			t.Fatalf("version %d: material %d bytes, HSM key %q", vr.Version, len(vr.Material), vr.HSMKey)
		}
		labels[vr.HSMKey] = true
		if _, ok := h.keys[vr.HSMKey]; !ok {
			t.Fatalf("version %d's HSM key %q is not in the HSM", vr.Version, vr.HSMKey)
		}
	}
	if len(h.keys) != 3 || strings.Contains(string(kv.Value), "t/hsm-material") {
		t.Fatalf("%d HSM keys", len(h.keys))
	}
	// Destroy deletes the version's key from the HSM.
	v1 := rec.Versions[0].HSMKey
	if _, err := m.Destroy(ctx, "t/hsm", 1); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.keys[v1]; ok || len(h.destroys) != 1 {
		t.Fatalf("destroyed version's HSM key is still there (destroys %v)", h.destroys)
	}
	if _, _, err := m.Decrypt(ctx, dk.Wrapped, nil); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("decrypt under a destroyed version: %v", err)
	}
	// The HSM failing: the rotation fails, nothing is left behind.
	h.failGen = true
	if _, err := m.Rotate(ctx, "t/hsm"); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("rotation with a failing HSM: %v", err)
	}
	h.failGen = false
	// A create that loses the race leaves no orphan key in the HSM.
	n := len(h.keys)
	if _, err := m.Create(ctx, "t/hsm", "hsm", ""); errs.KindOf(err) != errs.Exists {
		t.Fatalf("second create: %v", err)
	}
	if len(h.keys) != n {
		t.Fatalf("a failed create left a key in the HSM: %d keys, was %d", len(h.keys), n)
	}
	// Another authority (sharing the store) whose HSM lacks the key says so.
	h2 := &fakeHSM{}
	m2, _ := New(st, bytes.Repeat([]byte{7}, 32), hsmTable(), &recorder{}, WithHSM(h2))
	if _, _, err := m2.Encrypt(ctx, "t/hsm", []byte("x"), nil); errs.KindOf(err) != errs.Unavailable || !strings.Contains(err.Error(), "no key labelled") {
		t.Fatalf("encrypt on an authority whose HSM lacks the key: %v", err)
	}
	// Once its HSM has the keys (restored from the HSM's backup), the key
	// works there without a restart: the failure was not cached.
	h.mu.Lock()
	h2.keys = map[string][]byte{}
	for l, k := range h.keys {
		h2.keys[l] = k
	}
	h.mu.Unlock()
	if _, _, err := m2.Encrypt(ctx, "t/hsm", []byte("x"), nil); err != nil {
		t.Fatalf("encrypt once the HSM has the key: %v", err)
	}
}

// Without an HSM (the authority's seal is not the PKCS#11 seal) a
// hardware-backed key cannot be created, and says why; other
// classifications work.
func TestHardwareBackedWithoutHSM(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	m, err := New(st, bytes.Repeat([]byte{7}, 32), hsmTable(), &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Create(ctx, "t/hsm", "hsm", "")
	if errs.KindOf(err) != errs.Precondition || !strings.Contains(err.Error(), "seal.type pkcs11") {
		t.Fatalf("create without HSM: %v", err)
	}
	if _, err := m.Get(ctx, "t/hsm"); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("the refused key exists: %v", err)
	}
	if _, err := m.Create(ctx, "t/soft", "confidential", ""); err != nil {
		t.Fatal(err)
	}
	// A stored HSM-held key (made by an authority with the HSM) is
	// unavailable here, with the reason.
	m2, _ := New(st, bytes.Repeat([]byte{7}, 32), hsmTable(), &recorder{}, WithHSM(&fakeHSM{}))
	if _, err := m2.Create(ctx, "t/hsm2", "hsm", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Encrypt(ctx, "t/hsm2", []byte("x"), nil); errs.KindOf(err) != errs.Unavailable || !strings.Contains(err.Error(), "held in an HSM") {
		t.Fatalf("encrypt without the HSM: %v", err)
	}
}

func TestHardwareBackedTableRules(t *testing.T) {
	for _, c := range []Classification{
		{Name: "x", Algorithm: kmsfmt.AlgAES256GCMHSM, RotationPeriod: time.Hour},
		{Name: "x", Algorithm: kmsfmt.AlgAES256GCMHKDF, RotationPeriod: time.Hour, HardwareBacked: true},
	} {
		if err := (Table{"x": c}).Validate(); err == nil {
			t.Fatalf("%+v accepted", c)
		}
	}
}
