package kmscrypto

import (
	"bytes"
	"testing"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// FuzzDecrypt (red team): a ciphertext is untrusted input (a stored
// object, a caller's request), and Decrypt now runs it through pooled
// scratch (AAD buffer, pre-keyed HMAC, message key). Whatever the bytes
// and the context, Decrypt never panics, opens only what Encrypt made
// with that very context, and leaves nothing in the pool that changes the
// next call: a good ciphertext still opens and a fresh one round-trips
// after every input.
func FuzzDecrypt(f *testing.F) {
	key := bytes.Repeat([]byte{7}, KeySize)
	versions := map[kmsfmt.Alg]*Version{}
	good := map[kmsfmt.Alg][]byte{}
	want := []byte("attack at dawn")
	goodCtx := map[string]string{"tenant": "a"}
	for _, alg := range []kmsfmt.Alg{kmsfmt.AlgAES256GCM, kmsfmt.AlgAES256GCMHKDF} {
		v, err := NewVersion(alg, key)
		if err != nil {
			f.Fatal(err)
		}
		ct, err := v.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, want, goodCtx)
		if err != nil {
			f.Fatal(err)
		}
		versions[alg], good[alg] = v, ct
		f.Add(ct, "tenant", "a")
		f.Add(ct, "tenant", "b")
		f.Add(ct[:len(ct)-1], "tenant", "a")
	}
	f.Add([]byte{}, "", "")
	f.Fuzz(func(t *testing.T, b []byte, k, val string) {
		encCtx := map[string]string{k: val}
		if k == "" {
			encCtx = nil
		}
		h, raw, payload, err := kmsfmt.Parse(b)
		if err != nil {
			return
		}
		for alg, v := range versions {
			pt, err := v.Decrypt(h, raw, payload, encCtx)
			if err == nil {
				// Only a ciphertext Encrypt made (the seeds: the key is
				// fixed, so the fuzzing process's seeds open too) opens,
				// and only with its context.
				if len(encCtx) != 1 || encCtx["tenant"] != "a" || !bytes.Equal(pt, want) {
					t.Fatalf("%s: %x opened to %q under %v", alg, b, pt, encCtx)
				}
			}
			gh, graw, gp, err := kmsfmt.Parse(good[alg])
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := v.Decrypt(gh, graw, gp, goodCtx); err != nil || !bytes.Equal(pt, want) {
				t.Fatalf("%s: the good ciphertext no longer opens after %x: %q %v", alg, b, pt, err)
			}
			ct, err := v.Encrypt(kmsfmt.Header{KeyName: "k", Version: 1}, b, encCtx)
			if err != nil {
				t.Fatal(err)
			}
			h2, raw2, p2, err := kmsfmt.Parse(ct)
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := v.Decrypt(h2, raw2, p2, encCtx); err != nil || !bytes.Equal(pt, b) {
				t.Fatalf("%s: round trip of %x under %v: %q %v", alg, b, encCtx, pt, err)
			}
		}
	})
}
