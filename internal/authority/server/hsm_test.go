//go:build cgo

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/softhsm"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

func TestMain(m *testing.M) {
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

const (
	hsmPIN      = "srv-hsm-pin-31415"
	hsmWrongPIN = "srv-wrong-pin-27182"
	hsmPINEnv   = "WARD_TEST_SRV_HSM_PIN"
)

// hsmAuthority is one run of an authority over a data dir, with its log.
type hsmAuthority struct {
	srv  *Server
	c    *client.Client
	log  *syncbuf.Buffer
	stop func()
}

func startHSM(t *testing.T, cfg *config.Server) (*hsmAuthority, error) {
	t.Helper()
	ctx := context.Background()
	raw, err := OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := OpenSeal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &hsmAuthority{log: &syncbuf.Buffer{}}
	a.srv, err = New(cfg, raw, sl, slog.New(slog.NewTextHandler(a.log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.srv.Start(ctx); err != nil {
		a.srv.Stop()
		raw.Close()
		return a, err
	}
	if a.c, err = client.Dial(a.srv.AdminAddress()); err != nil {
		t.Fatal(err)
	}
	a.stop = func() {
		a.c.Close()
		a.srv.Stop()
		raw.Close()
	}
	t.Cleanup(func() {
		if a.stop != nil {
			a.stop()
		}
	})
	return a, nil
}

func (a *hsmAuthority) close() { a.stop(); a.stop = nil }

func hsmConfig(t *testing.T, dir, token string) *config.Server {
	cfg := baseConfig(dir)
	cfg.Seal = config.Seal{Type: "pkcs11", PKCS11: config.PKCS11{Module: softhsm.Use(t), TokenLabel: token, PINEnv: hsmPINEnv}}
	cfg.KMS = config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute), Classifications: map[string]config.Classification{
		"hsm-secret": {RotationPeriod: yamlconf.Duration(30 * 24 * time.Hour), HardwareBacked: true},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o700)
	return cfg
}

// storedRecord reads a key's record through the barrier.
func storedRecord(t *testing.T, srv *Server, name string) kms.KeyRecord {
	t.Helper()
	kvs, err := srv.barrier.Store().List(context.Background(), "kms/keys/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		var rec kms.KeyRecord
		if json.Unmarshal(kv.Value, &rec) == nil && rec.Name == name {
			return rec
		}
	}
	t.Fatalf("no stored record for key %q", name)
	return kms.KeyRecord{}
}

// The PKCS#11 seal and hardware-backed keys, end to end with SoftHSM2:
// init, HSM-resident keys through the KMS API, restart auto-unseals, a
// wrong PIN and a lost token leave the authority sealed with a clear
// error (never the PIN), and the recovery shares unseal it.
func TestPKCS11SealEndToEnd(t *testing.T) {
	ctx := context.Background()
	softhsm.NewToken(t, "srv-e2e", hsmPIN)
	t.Setenv(hsmPINEnv, hsmPIN)
	cfg := hsmConfig(t, filepath.Join(t.TempDir(), "a"), "srv-e2e")

	a, err := startHSM(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ir, err := a.c.Operator.Init(ctx, &wardv1.InitRequest{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(ir.Shares) != 3 || ir.Status.Sealed || ir.Status.SealType != "pkcs11" {
		t.Fatalf("init: %d recovery shares, status %v", len(ir.Shares), ir.Status)
	}
	// A hardware-backed key and a software one, used through the API.
	for _, k := range []struct{ name, class string }{{"t/hsm", "hsm-secret"}, {"t/soft", "confidential"}} {
		if _, err := a.c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: k.name, Classification: k.class}); err != nil {
			t.Fatal(err)
		}
	}
	secrets := [][]byte{[]byte("hsm-plaintext-1")}
	encCtx := map[string]string{"tenant": "a"}
	enc, err := a.c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "t/hsm", Plaintext: secrets[0], Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	dk, err := a.c.KMS.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: "t/hsm"})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, dk.Plaintext)
	softCT, err := a.c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "t/soft", Plaintext: []byte("soft-plaintext")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "t/hsm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: enc.Ciphertext, Context: map[string]string{"tenant": "b"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("decrypt with another context: %v", err)
	}
	// The records hold HSM labels only; the keys in the token are
	// sensitive and were never extractable.
	rec := storedRecord(t, a.srv, "t/hsm")
	tok, err := a.srv.sealer.(*seal.PKCS11Seal).Token()
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Versions) != 2 || rec.Versions[0].HSMKey == rec.Versions[1].HSMKey {
		t.Fatalf("record versions %+v", rec.Versions)
	}
	for _, v := range rec.Versions {
		if v.Material != nil || v.HSMKey == "" || v.Alg != "aes-256-gcm-hsm" {
			t.Fatalf("version %d: %d bytes of material, HSM key %q, alg %s", v.Version, len(v.Material), v.HSMKey, v.Alg)
		}
		info, err := tok.KeyInfo(v.HSMKey)
		if err != nil || info.Extractable || !info.Sensitive || !info.NeverExtractable || !info.Token {
			t.Fatalf("version %d in the HSM: %+v, %v", v.Version, info, err)
		}
	}
	if soft := storedRecord(t, a.srv, "t/soft"); len(soft.Versions[0].Material) != 32 || soft.Versions[0].HSMKey != "" {
		t.Fatalf("software key record %+v", soft.Versions[0])
	}
	a.close()
	raw, _ := os.ReadFile(cfg.Storage.Bbolt.Path)
	assertAbsent(t, "the bbolt file", raw, append(secrets, []byte(hsmPIN)))

	// Restart: auto-unseals; old ciphertexts decrypt in the HSM.
	a, err = startHSM(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.srv.Sealed() {
		t.Fatalf("restart did not auto-unseal: %s", a.log)
	}
	for _, ct := range [][]byte{enc.Ciphertext, dk.Wrapped} {
		want := secrets[0]
		var c map[string]string = encCtx
		if bytes.Equal(ct, dk.Wrapped) {
			want, c = dk.Plaintext, nil
		}
		pt, err := a.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct, Context: c})
		if err != nil || !bytes.Equal(pt.Plaintext, want) {
			t.Fatalf("decrypt after restart: %v", err)
		}
	}
	a.close()

	// A wrong PIN: the authority starts sealed (it has recovery shares),
	// the log says the token refused the PIN, and no PIN is anywhere.
	t.Setenv(hsmPINEnv, hsmWrongPIN)
	a, err = startHSM(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.c.Operator.Status(ctx, &wardv1.StatusRequest{})
	if err != nil || !st.Sealed || !a.srv.Sealed() {
		t.Fatalf("wrong PIN: status %v, %v", st, err)
	}
	if !a.log.Contains("refused the user PIN") || !a.log.Contains(hsmPINEnv) {
		t.Fatalf("the log does not say the PIN was refused:\n%s", a.log)
	}
	if _, err := a.c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "t/soft", Plaintext: []byte("x")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("encrypt while sealed: %v", err)
	}
	a.close()
	for _, p := range []string{hsmWrongPIN, hsmPIN} {
		if a.log.Contains(p) {
			t.Fatalf("the log contains a PIN:\n%s", a.log)
		}
	}
	t.Setenv(hsmPINEnv, hsmPIN)

	// The token is lost: sealed, with a clear error; two recovery shares
	// unseal; software keys work, HSM-held ones say the HSM is missing.
	if err := softhsm.DeleteToken("srv-e2e"); err != nil {
		t.Fatal(err)
	}
	a, err = startHSM(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !a.srv.Sealed() || !a.log.Contains(`has no token labelled \"srv-e2e\"`) {
		t.Fatalf("lost token: sealed %v, log:\n%s", a.srv.Sealed(), a.log)
	}
	for _, s := range ir.Shares[1:] {
		if _, err := a.c.Operator.Unseal(ctx, &wardv1.UnsealRequest{Share: s}); err != nil {
			t.Fatal(err)
		}
	}
	if a.srv.Sealed() {
		t.Fatal("recovery shares did not unseal")
	}
	if pt, err := a.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: softCT.Ciphertext}); err != nil || string(pt.Plaintext) != "soft-plaintext" {
		t.Fatalf("software key after recovery: %v", err)
	}
	_, err = a.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: enc.Ciphertext, Context: encCtx})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "held in an HSM") {
		t.Fatalf("HSM key without the HSM: %v", err)
	}
}

// An authority without the PKCS#11 seal refuses hardware-backed keys at
// create, saying why.
func TestHardwareBackedNeedsPKCS11Seal(t *testing.T) {
	cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
	cfg.KMS.Classifications = map[string]config.Classification{"hsm-secret": {RotationPeriod: yamlconf.Duration(time.Hour), HardwareBacked: true}}
	_, c := start(t, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "t/hsm", Classification: "hsm-secret"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "seal.type pkcs11") {
		t.Fatalf("create: %v", err)
	}
}

// Without recovery shares nothing but the HSM can unseal: a wrong PIN
// makes Start fail with a clear error (no PIN in it) and the authority
// sealed; the right PIN auto-unseals again.
func TestPKCS11SealWithoutRecoveryShares(t *testing.T) {
	ctx := context.Background()
	softhsm.NewToken(t, "srv-norec", hsmPIN)
	t.Setenv(hsmPINEnv, hsmPIN)
	cfg := hsmConfig(t, filepath.Join(t.TempDir(), "a"), "srv-norec")
	a, err := startHSM(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ir, err := a.c.Operator.Init(ctx, &wardv1.InitRequest{})
	if err != nil || len(ir.Shares) != 0 || ir.Status.Sealed {
		t.Fatalf("init without recovery shares: %v, %v", ir, err)
	}
	a.close()

	t.Setenv(hsmPINEnv, hsmWrongPIN)
	a, err = startHSM(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "refused the user PIN") || !a.srv.Sealed() {
		t.Fatalf("start with a wrong PIN: %v (sealed %v)", err, a.srv.Sealed())
	}
	if strings.Contains(err.Error(), hsmWrongPIN) || strings.Contains(err.Error(), hsmPIN) || a.log.Contains(hsmWrongPIN) {
		t.Fatalf("a PIN in the error or the log: %v", err)
	}
	t.Setenv(hsmPINEnv, hsmPIN)
	a, err = startHSM(t, cfg)
	if err != nil || a.srv.Sealed() {
		t.Fatalf("start with the right PIN: %v", err)
	}
}
