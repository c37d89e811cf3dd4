package kmscrypto

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

func TestRoundTripAndTamper(t *testing.T) {
	for _, alg := range []kmsfmt.Alg{kmsfmt.AlgAES256GCM, kmsfmt.AlgAES256GCMHKDF} {
		t.Run(alg.String(), func(t *testing.T) {
			v, err := NewVersion(alg, NewKey())
			if err != nil {
				t.Fatal(err)
			}
			ctx := map[string]string{"tenant": "a", "table": "users"}
			pt := []byte("attack at dawn")
			ct, err := v.Encrypt(kmsfmt.Header{KeyName: "tenant-a/payments", Version: 3}, pt, ctx)
			if err != nil {
				t.Fatal(err)
			}
			h, raw, payload, err := kmsfmt.Parse(ct)
			if err != nil {
				t.Fatal(err)
			}
			if h.KeyName != "tenant-a/payments" || h.Version != 3 || h.Alg != alg {
				t.Fatalf("header = %+v", h)
			}
			got, err := v.Decrypt(h, raw, payload, ctx)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("decrypt = %q, %v", got, err)
			}
			cases := []struct {
				name string
				ctx  map[string]string
				mut  func([]byte) []byte
			}{
				{"wrong context value", map[string]string{"tenant": "b", "table": "users"}, nil},
				{"missing context", nil, nil},
				{"extra context", map[string]string{"tenant": "a", "table": "users", "x": ""}, nil},
				{"flipped last byte", ctx, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }},
				{"flipped payload first byte", ctx, func(b []byte) []byte { b[len(raw)] ^= 0x80; return b }},
				{"truncated", ctx, func(b []byte) []byte { return b[:len(b)-1] }},
				{"version changed", ctx, func(b []byte) []byte { b[len(raw)-1] ^= 2; return b }},
			}
			for _, c := range cases {
				b := append([]byte(nil), ct...)
				if c.mut != nil {
					b = c.mut(b)
				}
				h2, raw2, p2, err := kmsfmt.Parse(b)
				if err != nil {
					continue // rejected by the parser: fine
				}
				if _, err := v.Decrypt(h2, raw2, p2, c.ctx); !errors.Is(err, ErrAuth) {
					t.Errorf("%s: err = %v, want ErrAuth", c.name, err)
				}
			}
		})
	}
}

func TestWrongKey(t *testing.T) {
	a, _ := NewVersion(kmsfmt.AlgAES256GCMHKDF, NewKey())
	b, _ := NewVersion(kmsfmt.AlgAES256GCMHKDF, NewKey())
	ct, _ := a.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, []byte("x"), nil)
	h, raw, p, _ := kmsfmt.Parse(ct)
	if _, err := b.Decrypt(h, raw, p, nil); !errors.Is(err, ErrAuth) {
		t.Fatalf("err = %v", err)
	}
}

func BenchmarkWrapDataKey(b *testing.B) {
	for _, alg := range []kmsfmt.Alg{kmsfmt.AlgAES256GCM, kmsfmt.AlgAES256GCMHKDF} {
		b.Run(alg.String(), func(b *testing.B) {
			v, _ := NewVersion(alg, NewKey())
			dk := NewKey()
			ctx := map[string]string{"tenant": "a"}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Encrypt(kmsfmt.Header{KeyName: "tenant-a/payments", Version: 1}, dk, ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestMessageKeyIsHKDFExpand holds messageKey (one HMAC-SHA256 block from
// a pooled, pre-keyed HMAC) equal to crypto/hkdf's Expand with the same
// PRK and info, for many salts and from reused scratch.
func TestMessageKeyIsHKDFExpand(t *testing.T) {
	v, err := NewVersion(kmsfmt.AlgAES256GCMHKDF, NewKey())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		salt := NewKey() // 32 random bytes, the salt's size
		want, err := hkdf.Expand(sha256.New, v.prk, hkdfInfo+string(salt), KeySize)
		if err != nil {
			t.Fatal(err)
		}
		s := v.getScratch()
		got := append([]byte(nil), v.messageKey(s, salt)...)
		v.putScratch(s)
		if !bytes.Equal(got, want) {
			t.Fatalf("salt %x: message key %x, crypto/hkdf.Expand gives %x", salt, got, want)
		}
	}
}

// TestExistingCiphertextsDecrypt opens ciphertexts made by an earlier
// ward (before the message key came from a pooled HMAC): the format and
// the derivation are unchanged.
func TestExistingCiphertextsDecrypt(t *testing.T) {
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = byte(i)
	}
	for alg, ctHex := range map[kmsfmt.Alg]string{
		kmsfmt.AlgAES256GCM:     "774b4d530101087061796d656e747300000007ae9930d0f6f9900de0c9f3b7dcbcaa6564c1983baa0ffe2b8987bd575080f4745eb03fb92fb1761e6b72",
		kmsfmt.AlgAES256GCMHKDF: "774b4d530102087061796d656e7473000000079a32c18414e64ba036509d02e9562891cadab130e2a251007d42bf0e8d22437da5bba0991f78fb95b32c4ad543d7c0e5d6506b8f51610aad095a81b27f0e23c72a5a3ce658b6ddd90855",
	} {
		v, err := NewVersion(alg, key)
		if err != nil {
			t.Fatal(err)
		}
		ct, _ := hex.DecodeString(ctHex)
		for i := 0; i < 3; i++ { // fresh and reused scratch
			h, raw, p, err := kmsfmt.Parse(ct)
			if err != nil {
				t.Fatal(err)
			}
			pt, err := v.Decrypt(h, raw, p, map[string]string{"tenant": "a"})
			if err != nil || string(pt) != "attack at dawn" || h.KeyName != "payments" || h.Version != 7 {
				t.Fatalf("%s: %q, %+v, %v", alg, pt, h, err)
			}
			if _, err := v.Decrypt(h, raw, p, map[string]string{"tenant": "b"}); !errors.Is(err, ErrAuth) {
				t.Fatalf("%s: other context: %v", alg, err)
			}
		}
	}
}

// TestConcurrentScratch encrypts and decrypts from many goroutines at
// once (run with -race): pooled buffers are never shared between calls.
func TestConcurrentScratch(t *testing.T) {
	v, err := NewVersion(kmsfmt.AlgAES256GCMHKDF, NewKey())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 0; i < 200; i++ {
				pt := []byte(fmt.Sprintf("message %d of %d", i, g))
				ctx := map[string]string{"g": fmt.Sprint(g), "i": fmt.Sprint(i)}
				ct, err := v.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, pt, ctx)
				if err != nil {
					t.Error(err)
					return
				}
				h, raw, p, _ := kmsfmt.Parse(ct)
				got, err := v.Decrypt(h, raw, p, ctx)
				if err != nil || !bytes.Equal(got, pt) {
					t.Errorf("%q: %q, %v", pt, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestHKDFEncryptAllocations keeps the per-message key off the heap: an
// HKDF encrypt allocates its output, the message key's AES schedule and
// its GCM, and nothing more (it was 16 allocations with crypto/hkdf.Expand
// and a fresh AAD on every call).
func TestHKDFEncryptAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled scratch at random")
	}
	v, err := NewVersion(kmsfmt.AlgAES256GCMHKDF, NewKey())
	if err != nil {
		t.Fatal(err)
	}
	h := kmsfmt.Header{KeyName: "bench", Version: 1}
	pt := make([]byte, 32)
	v.Encrypt(h, pt, nil) // fill the pool
	if n := testing.AllocsPerRun(200, func() { v.Encrypt(h, pt, nil) }); n > 4 {
		t.Fatalf("an HKDF encrypt allocates %.1f times, want at most 4", n)
	}
}
