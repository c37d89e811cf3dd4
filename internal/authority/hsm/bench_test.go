//go:build cgo

package hsm_test

import (
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/testutil/softhsm"
)

// BenchmarkGCMWrap: wrapping and unwrapping a 32-byte data key with
// AES-256-GCM, in SoftHSM2 (one C_EncryptInit+C_Encrypt or
// C_DecryptInit+C_Decrypt per call) and in process (crypto/aes). The
// crypto alone; BenchmarkHSMDataKey in internal/authority/kms measures
// the same through the KMS. bench/hsm/run.sh prints both.
func BenchmarkGCMWrap(b *testing.B) {
	mod := softhsm.Use(b)
	softhsm.NewToken(b, "hsm-bench", pin)
	b.Setenv("WARD_TEST_HSM_PIN", pin)
	tok, err := hsm.Open(hsm.Config{Module: mod, TokenLabel: "hsm-bench", PINEnv: "WARD_TEST_HSM_PIN"})
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	if err := tok.GenerateKey("bench"); err != nil {
		b.Fatal(err)
	}
	k, err := tok.Key("bench")
	if err != nil {
		b.Fatal(err)
	}
	blk, _ := aes.NewCipher(make([]byte, 32))
	sw, _ := cipher.NewGCMWithRandomNonce(blk)
	dk, aad := make([]byte, 32), []byte("ward kms header and context")
	hct, _ := k.Seal(dk, aad)
	sct := sw.Seal(nil, nil, dk, aad)
	b.Run("wrap/hsm", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Seal(dk, aad); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wraps/s")
	})
	b.Run("unwrap/hsm", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Open(hct, aad); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "unwraps/s")
	})
	b.Run("wrap/software", func(b *testing.B) {
		for b.Loop() {
			sw.Seal(nil, nil, dk, aad)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wraps/s")
	})
	b.Run("unwrap/software", func(b *testing.B) {
		for b.Loop() {
			if _, err := sw.Open(nil, nil, sct, aad); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "unwraps/s")
	})
}
