//go:build cgo

package kms

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/testutil/softhsm"
)

// TestMain removes the package's SoftHSM2 token store after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	softhsm.Cleanup()
	os.Exit(code)
}

// tokenHSM is an hsm.Token as the KMS sees it (the server has its own).
type tokenHSM struct{ t *hsm.Token }

func (h tokenHSM) GenerateKey(label string) error { return h.t.GenerateKey(label) }
func (h tokenHSM) DestroyKey(label string) error  { return h.t.DestroyKey(label) }
func (h tokenHSM) Key(label string) (kmscrypto.External, error) {
	k, err := h.t.Key(label)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// BenchmarkHSMDataKey: wrapping (GenerateDataKey) and unwrapping
// (Decrypt) a 32-byte data key through the KMS, with the key in SoftHSM2
// (every wrap and unwrap is a CKM_AES_GCM call into the token) and with a
// software key (aes-256-gcm-hkdf-sha256 in process). bench/hsm/run.sh
// prints the ratio.
func BenchmarkHSMDataKey(b *testing.B) {
	ctx := context.Background()
	mod := softhsm.Use(b)
	softhsm.NewToken(b, "kms-bench", "bench-pin-1")
	b.Setenv("WARD_BENCH_HSM_PIN", "bench-pin-1")
	tok, err := hsm.Open(hsm.Config{Module: mod, TokenLabel: "kms-bench", PINEnv: "WARD_BENCH_HSM_PIN"})
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	m, err := New(openStore(b), bytes.Repeat([]byte{7}, 32), hsmTable(), &recorder{}, WithHSM(tokenHSM{tok}))
	if err != nil {
		b.Fatal(err)
	}
	for _, kc := range []struct{ name, class string }{{"software", "confidential"}, {"hsm", "hsm"}} {
		if _, err := m.Create(ctx, "bench/"+kc.name, kc.class, ""); err != nil {
			b.Fatal(err)
		}
		dk, err := m.GenerateDataKey(ctx, "bench/"+kc.name, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("wrap/"+kc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := m.GenerateDataKey(ctx, "bench/"+kc.name, 0, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wraps/s")
		})
		b.Run("unwrap/"+kc.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := m.Decrypt(ctx, dk.Wrapped, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "unwraps/s")
		})
	}
}
