//go:build cgo

package hsm_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/testutil/otheruid"
	"github.com/wardproject/ward/internal/testutil/softhsm"
)

func TestMain(m *testing.M) {
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

const pin = "hsm-test-pin-4711"

func openToken(t *testing.T, label string) *hsm.Token {
	t.Helper()
	mod := softhsm.Use(t)
	softhsm.NewToken(t, label, pin)
	t.Setenv("WARD_TEST_HSM_PIN", pin)
	tok, err := hsm.Open(hsm.Config{Module: mod, TokenLabel: label, PINEnv: "WARD_TEST_HSM_PIN"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

func TestKeyInHSM(t *testing.T) {
	tok := openToken(t, "hsm-key")
	if err := tok.GenerateKey("k1"); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKey("k1"); err == nil {
		t.Fatal("a second key with the same label was created")
	}
	info, err := tok.KeyInfo("k1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Extractable || !info.Sensitive || !info.NeverExtractable || !info.Token {
		t.Fatalf("key attributes %+v: want a sensitive, never extractable token object", info)
	}
	k, err := tok.Key("k1")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := k.Seal([]byte("secret data key"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	ct2, _ := k.Seal([]byte("secret data key"), []byte("aad"))
	if bytes.Equal(ct, ct2) {
		t.Fatal("two encryptions gave the same ciphertext: the nonce repeats")
	}
	pt, err := k.Open(ct, []byte("aad"))
	if err != nil || string(pt) != "secret data key" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	if _, err := k.Open(ct, []byte("other aad")); !errors.Is(err, hsm.ErrAuth) {
		t.Fatalf("Open with other aad: %v, want ErrAuth", err)
	}
	bad := append([]byte(nil), ct...)
	bad[len(bad)-1] ^= 1
	if _, err := k.Open(bad, []byte("aad")); !errors.Is(err, hsm.ErrAuth) {
		t.Fatalf("Open of an altered ciphertext: %v, want ErrAuth", err)
	}
	if err := tok.DestroyKey("k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Key("k1"); !errors.Is(err, hsm.ErrToken) {
		t.Fatalf("Key after destroy: %v", err)
	}
}

func TestWrongPINAndMissingToken(t *testing.T) {
	mod := softhsm.Use(t)
	softhsm.NewToken(t, "hsm-pin", pin)
	t.Setenv("WARD_TEST_HSM_PIN", "wrong-pin-0815")
	_, err := hsm.Open(hsm.Config{Module: mod, TokenLabel: "hsm-pin", PINEnv: "WARD_TEST_HSM_PIN"})
	if !errors.Is(err, hsm.ErrPIN) || !strings.Contains(err.Error(), "refused the user PIN") {
		t.Fatalf("wrong PIN: %v", err)
	}
	if strings.Contains(err.Error(), "wrong-pin-0815") {
		t.Fatalf("the error repeats the PIN: %v", err)
	}
	t.Setenv("WARD_TEST_HSM_PIN", pin)
	_, err = hsm.Open(hsm.Config{Module: mod, TokenLabel: "no-such-token", PINEnv: "WARD_TEST_HSM_PIN"})
	if !errors.Is(err, hsm.ErrToken) || !strings.Contains(err.Error(), `has no token labelled "no-such-token"`) {
		t.Fatalf("missing token: %v", err)
	}
	_, err = hsm.Open(hsm.Config{Module: "/nonexistent/libpkcs11.so", TokenLabel: "x", PINEnv: "WARD_TEST_HSM_PIN"})
	if !errors.Is(err, hsm.ErrToken) || !strings.Contains(err.Error(), "/nonexistent/libpkcs11.so") {
		t.Fatalf("missing module: %v", err)
	}
	t.Setenv("WARD_TEST_HSM_PIN", "")
	_, err = hsm.Open(hsm.Config{Module: mod, TokenLabel: "hsm-pin", PINEnv: "WARD_TEST_HSM_PIN"})
	if !errors.Is(err, hsm.ErrPIN) {
		t.Fatalf("empty PIN variable: %v", err)
	}
}

// The PIN file: another local uid must not be able to read it, so ward
// refuses one that group or others can access, or that another uid owns.
func TestPINFilePermissions(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pin")
	if err := os.WriteFile(p, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := hsm.Config{PINFile: p}
	got, err := c.ReadPIN()
	if err != nil || got != "1234" {
		t.Fatalf("ReadPIN = %q, %v", got, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(p, mode)
		if _, err := c.ReadPIN(); !errors.Is(err, hsm.ErrPIN) || !strings.Contains(err.Error(), "accessible by group or others") || strings.Contains(err.Error(), "1234") {
			t.Fatalf("mode %04o: %v", mode, err)
		}
	}
	os.Chmod(p, 0o600)
	// A FIFO at the path is refused at once, not waited on for a writer.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoErr := make(chan error, 1)
	go func() { _, err := (hsm.Config{PINFile: fifo}).ReadPIN(); fifoErr <- err }()
	select {
	case err := <-fifoErr:
		if !errors.Is(err, hsm.ErrPIN) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("FIFO PIN file: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("reading a FIFO PIN file blocked")
	}
	link := filepath.Join(dir, "link")
	os.Symlink(p, link)
	if _, err := (hsm.Config{PINFile: link}).ReadPIN(); err == nil {
		t.Fatal("a PIN file reached through a symlink was accepted")
	}
	if !otheruid.Available(t) {
		t.Log("not root: the other-uid checks are skipped")
		return
	}
	// Another uid cannot read the accepted file...
	cmd := otheruid.Command(otheruid.Nobody, "cat", p)
	os.Chmod(dir, 0o755)
	if out, err := cmd.CombinedOutput(); err == nil || strings.Contains(string(out), "1234") {
		t.Fatalf("uid 65534 read the PIN file: %q", out)
	}
	// ...and a file another uid owns (who could rewrite it) is refused.
	os.Chown(p, 65534, 65534)
	if _, err := c.ReadPIN(); !errors.Is(err, hsm.ErrPIN) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("file owned by another uid: %v", err)
	}
}

// FuzzOpen: a KMS ciphertext's payload is untrusted input that reaches
// C_Decrypt in the HSM. Whatever it is, Open must not crash and must refuse
// it as an authentication failure (it was not made by this key).
func FuzzOpen(f *testing.F) {
	mod := softhsm.Use(f)
	softhsm.NewToken(f, "hsm-fuzz", pin)
	f.Setenv("WARD_TEST_HSM_PIN", pin)
	tok, err := hsm.Open(hsm.Config{Module: mod, TokenLabel: "hsm-fuzz", PINEnv: "WARD_TEST_HSM_PIN"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { tok.Close() })
	if err := tok.GenerateKey("fuzz"); err != nil {
		f.Fatal(err)
	}
	k, err := tok.Key("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	good, _ := k.Seal([]byte("data key"), []byte("aad"))
	f.Add(good, []byte("aad"))
	f.Add([]byte{}, []byte{})
	f.Add(make([]byte, 28), []byte("aad"))
	f.Add(append(good[:len(good)-1:len(good)-1], good[len(good)-1]^1), []byte("aad"))
	f.Fuzz(func(t *testing.T, payload, aad []byte) {
		pt, err := k.Open(payload, aad)
		if err == nil {
			if !bytes.Equal(payload, good) || string(aad) != "aad" || string(pt) != "data key" {
				t.Fatalf("Open accepted a payload it did not make: %x", payload)
			}
			return
		}
		if !errors.Is(err, hsm.ErrAuth) {
			t.Fatalf("Open(%x): %v, want an authentication failure", payload, err)
		}
	})
}

// Concurrent use, and Close while operations run: no crash, later
// operations fail with ErrToken.
func TestConcurrentUseAndClose(t *testing.T) {
	tok := openToken(t, "hsm-conc")
	if err := tok.GenerateKey("c"); err != nil {
		t.Fatal(err)
	}
	k, err := tok.Key("c")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				ct, err := k.Seal([]byte("dk"), nil)
				if err != nil {
					if !errors.Is(err, hsm.ErrToken) {
						t.Errorf("Seal: %v", err)
					}
					return
				}
				if pt, err := k.Open(ct, nil); err == nil && string(pt) != "dk" {
					t.Errorf("Open = %q", pt)
				}
			}
		}()
	}
	tok.Close()
	wg.Wait()
	if _, err := k.Seal([]byte("x"), nil); !errors.Is(err, hsm.ErrToken) {
		t.Fatalf("Seal after Close: %v", err)
	}
}

// Anyone logged in to the token (another process with the PIN) cannot get
// the value of a key ward generated: CKA_VALUE is refused (sensitive) and
// wrapping it out under a key of their own is refused (not extractable).
// The control, an exportable key, shows both paths work when allowed.
func TestKeyValueNeverLeaves(t *testing.T) {
	tok := openToken(t, "hsm-export")
	if err := tok.GenerateKey("ward-key"); err != nil {
		t.Fatal(err)
	}
	if err := hsm.GenerateExportable(tok, "attacker"); err != nil {
		t.Fatal(err)
	}
	if v, err := hsm.ValueOf(tok, "attacker"); err != nil || len(v) != 32 {
		t.Fatalf("control: CKA_VALUE of an exportable key: %d bytes, %v", len(v), err)
	}
	if w, err := hsm.WrapWith(tok, "attacker", "attacker"); err != nil || len(w) < 32 {
		t.Fatalf("control: wrapping an exportable key: %v", err)
	}
	if v, err := hsm.ValueOf(tok, "ward-key"); err == nil || len(v) != 0 || !strings.Contains(err.Error(), "CKR_ATTRIBUTE_SENSITIVE") {
		t.Fatalf("CKA_VALUE of ward's key: %d bytes, %v", len(v), err)
	}
	if w, err := hsm.WrapWith(tok, "attacker", "ward-key"); err == nil || len(w) != 0 || !strings.Contains(err.Error(), "CKR_KEY_UNEXTRACTABLE") {
		t.Fatalf("wrapping ward's key out: %d bytes, %v", len(w), err)
	}
}
