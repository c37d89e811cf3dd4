package kmsplugin

import (
	"context"
	"testing"
)

// FuzzCheckDecrypt feeds what the apiserver hands back on Decrypt (the
// stored ciphertext, key_id and an annotation) to the plugin's checks:
// they never panic, and whatever they accept names the plugin's key with
// a key_id that matches the ciphertext's authenticated header.
func FuzzCheckDecrypt(f *testing.F) {
	p, fa, _ := newTestPlugin(&testing.T{})
	ct, v, _ := fa.Encrypt(context.Background(), "k8s/etcd", []byte("seed"), p.encCtx)
	f.Add(ct, KeyID("k8s/etcd", v), "", []byte(nil))
	f.Add(ct, "ward:k8s/etcd:2", "a.example.com", []byte("x"))
	f.Add([]byte("wKMS\x01\x02\x01a\x00\x00\x00\x01"), "ward:a:1", "", []byte(nil))
	f.Add([]byte("k8s:enc:kms:v2:"), "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, ct []byte, keyID, annKey string, annVal []byte) {
		var ann map[string][]byte
		if annKey != "" {
			ann = map[string][]byte{annKey: annVal}
		}
		if err := p.CheckDecrypt(ct, keyID, ann); err != nil {
			return
		}
		key, v, err := ParseKeyID(keyID)
		if err != nil || key != p.key || KeyID(key, v) != keyID || ann != nil {
			t.Fatalf("accepted %q / %q / %v", ct, keyID, ann)
		}
	})
}

// FuzzParseKeyID: never panics; what it accepts prints back the same.
func FuzzParseKeyID(f *testing.F) {
	for _, s := range []string{"ward:k8s/etcd:1", "ward:a:4294967295", "ward::", "ward:a:01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		key, v, err := ParseKeyID(id)
		if err == nil && KeyID(key, v) != id {
			t.Fatalf("%q parsed to %q %d", id, key, v)
		}
	})
}
