//go:build cgo

package seal

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/softhsm"
)

// TestMain removes the package's SoftHSM2 token store after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

const testPIN = "seal-test-pin-2718"

func pkcs11Seal(t *testing.T, token, keyLabel string) *PKCS11Seal {
	t.Helper()
	mod := softhsm.Use(t)
	t.Setenv("WARD_TEST_SEAL_PIN", testPIN)
	p := NewPKCS11(PKCS11Config{KeyLabel: keyLabel, Token: hsm.Config{Module: mod, TokenLabel: token, PINEnv: "WARD_TEST_SEAL_PIN"}})
	t.Cleanup(func() { p.Close() })
	return p
}

// Init without recovery shares, restart (a new Manager and seal over the
// same store) auto-unseals; shares are refused with the reason.
func TestPKCS11SealAutoUnseal(t *testing.T) {
	ctx := context.Background()
	softhsm.Use(t)
	softhsm.NewToken(t, "seal-auto", testPIN)
	raw := memstore.New()
	b := barrier.New(raw)
	p := pkcs11Seal(t, "seal-auto", "")
	m := NewManager(raw, b, p)
	res, err := m.Init(ctx, InitOptions{})
	if err != nil || len(res.Shares) != 0 {
		t.Fatalf("init: %v, %d shares", err, len(res.Shares))
	}
	tok, _ := p.Token()
	info, err := tok.KeyInfo(DefaultPKCS11KeyLabel)
	if err != nil || info.Extractable || !info.Sensitive || !info.NeverExtractable {
		t.Fatalf("wrapping key %+v, %v", info, err)
	}
	p.Close()

	b2 := barrier.New(raw)
	m2 := NewManager(raw, b2, pkcs11Seal(t, "seal-auto", ""))
	st, err := m2.AutoUnseal(ctx)
	if err != nil || st.Sealed || st.Type != TypePKCS11 {
		t.Fatalf("auto-unseal after restart: %+v, %v", st, err)
	}
	m2.Seal(ctx)
	if _, err := m2.SubmitShare(ctx, strings.Repeat("ab", 33)); !errors.Is(err, ErrNoRecoveryShares) {
		t.Fatalf("share without recovery shares: %v", err)
	}
	// Another wrapping-key label than the one used at init: refused,
	// naming both.
	m3 := NewManager(raw, barrier.New(raw), pkcs11Seal(t, "seal-auto", "other-label"))
	if _, err := m3.AutoUnseal(ctx); err == nil || !strings.Contains(err.Error(), `"ward-seal"`) {
		t.Fatalf("other key label: %v", err)
	}
}

// Init with recovery shares; the token is lost: auto-unseal fails, the
// barrier stays sealed, and a quorum of recovery shares unseals it.
func TestPKCS11SealRecoveryShares(t *testing.T) {
	ctx := context.Background()
	softhsm.Use(t)
	softhsm.NewToken(t, "seal-rec", testPIN)
	raw := memstore.New()
	p := pkcs11Seal(t, "seal-rec", "")
	m := NewManager(raw, barrier.New(raw), p)
	if _, err := m.Init(ctx, InitOptions{Shares: 3, Threshold: 1}); !errors.Is(err, ErrBadOptions) {
		t.Fatalf("threshold 1: %v", err)
	}
	res, err := m.Init(ctx, InitOptions{Shares: 3, Threshold: 2})
	if err != nil || len(res.Shares) != 3 {
		t.Fatalf("init: %v", err)
	}
	p.Close()
	if err := softhsm.DeleteToken("seal-rec"); err != nil {
		t.Fatal(err)
	}
	b := barrier.New(raw)
	m2 := NewManager(raw, b, pkcs11Seal(t, "seal-rec", ""))
	st, err := m2.AutoUnseal(ctx)
	if !errors.Is(err, hsm.ErrToken) || !st.Sealed || !b.Sealed() || !strings.Contains(err.Error(), "recovery shares") {
		t.Fatalf("auto-unseal without the token: %+v, %v", st, err)
	}
	if st.Shares != 3 || st.Threshold != 2 {
		t.Fatalf("status %+v", st)
	}
	enc := res.Encoded()
	if _, err := m2.SubmitShare(ctx, enc[2]); err != nil {
		t.Fatal(err)
	}
	if st, err := m2.SubmitShare(ctx, enc[0]); err != nil || st.Sealed || b.Sealed() {
		t.Fatalf("recovery unseal: %+v, %v", st, err)
	}

	// Moving to a new token: a rekey with the recovery shares wraps a new
	// root key under a wrapping key generated in the new token (and makes
	// new recovery shares); from then on the authority auto-unseals.
	softhsm.NewToken(t, "seal-rec", testPIN)
	rs, err := m2.RekeyStart(ctx, InitOptions{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m2.RekeySubmit(ctx, rs.Nonce, enc[1]); err != nil {
		t.Fatal(err)
	}
	_, newShares, err := m2.RekeySubmit(ctx, rs.Nonce, enc[2])
	if err != nil || len(newShares) != 3 {
		t.Fatalf("rekey onto the new token: %d shares, %v", len(newShares), err)
	}
	m2.Seal(ctx)
	b3 := barrier.New(raw)
	m3 := NewManager(raw, b3, pkcs11Seal(t, "seal-rec", ""))
	if st, err := m3.AutoUnseal(ctx); err != nil || st.Sealed || b3.Sealed() {
		t.Fatalf("auto-unseal with the new token: %+v, %v", st, err)
	}
}
