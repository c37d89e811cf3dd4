package checkpoint

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/keyutil"
)

// seedKey is a fixed P-256 key so that fuzz seeds are reproducible.
var seedKey = func() *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("checkpoint fuzz key"))
	k, _ := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	return k
}()

// FuzzParse feeds untrusted checkpoint files to the parser: it
// must not panic, and whatever it accepts must re-encode to an equal value.
func FuzzParse(f *testing.F) {
	key := seedKey
	root := sha256.Sum256(nil)
	cp, err := Sign(key, testOrigin, 7, root[:], time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		f.Fatal(err)
	}
	file, _ := Encode(cp)
	f.Add(file)
	compact, _ := json.Marshal(cp)
	f.Add(compact)
	f.Add([]byte(`{"origin":"x","size":1,"root_hash":"","time":"2026-01-01T00:00:00Z","key_id":"","signature":""}`))
	f.Add([]byte(`{"size":18446744073709551615}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, err := Parse(data)
		if err != nil {
			return
		}
		_ = Verify(cp, key.Public())
		again, err := Encode(cp)
		if err != nil {
			t.Fatalf("accepted checkpoint does not encode: %v", err)
		}
		back, err := Parse(again)
		if err != nil {
			t.Fatalf("re-encoded checkpoint rejected: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(back, cp) || !bytes.Equal(back.SignedBody(), cp.SignedBody()) {
			t.Fatalf("round trip changed the checkpoint:\n%+v\n%+v", cp, back)
		}
	})
}

// FuzzParsePublicKeyPEM feeds untrusted PEM to the key parser.
func FuzzParsePublicKeyPEM(f *testing.F) {
	b, _ := MarshalPublicKeyPEM(seedKey.Public())
	f.Add(b)
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ParsePublicKeyPEM(data)
		if err != nil {
			return
		}
		if _, err := keyutil.CheckpointKeyID(pub); err != nil {
			t.Fatalf("accepted key has no id: %v", err)
		}
	})
}
