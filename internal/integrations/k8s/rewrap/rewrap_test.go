package rewrap

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func encryptedObject(keyID string) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("ciphertext"))
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, keyID)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("seed"))
	return b
}

func TestKeyIDOf(t *testing.T) {
	v := append([]byte("k8s:enc:kms:v2:ward:"), encryptedObject("ward:k8s/etcd:2")...)
	if got := KeyIDOf(v, "ward"); got != "ward:k8s/etcd:2" {
		t.Fatalf("key_id %q", got)
	}
	for name, v := range map[string][]byte{
		"other provider": append([]byte("k8s:enc:kms:v2:other:"), encryptedObject("x")...),
		"aescbc":         []byte("k8s:enc:aescbc:v1:k1:..."),
		"plaintext":      []byte(`{"kind":"Secret"}`),
		"truncated":      append([]byte("k8s:enc:kms:v2:ward:"), encryptedObject("ward:k8s/etcd:2")[:5]...),
		"no key id":      []byte("k8s:enc:kms:v2:ward:"),
	} {
		if got := KeyIDOf(v, "ward"); got != NotWard {
			t.Errorf("%s: %q", name, got)
		}
	}
}

func FuzzKeyIDOf(f *testing.F) {
	f.Add(append([]byte("k8s:enc:kms:v2:ward:"), encryptedObject("ward:k:1")...))
	f.Add([]byte("k8s:enc:kms:v2:ward:\x12\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = KeyIDOf(b, "ward")
	})
}
