package checkpoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
	"time"
)

const testOrigin = "ward/test.example"

// newKey is a fresh P-256 signing key.
func newKey(testing.TB) *ecdsa.PrivateKey {
	return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
}

func TestSignVerifyParse(t *testing.T) {
	key := newKey(t)
	root := sha256.Sum256([]byte("root"))
	at := time.Date(2026, 11, 21, 19, 0, 0, 123, time.UTC)
	cp, err := Sign(key, testOrigin, 42, root[:], at)
	if err != nil {
		t.Fatal(err)
	}
	if want := testOrigin + "\n42\n" + base64.StdEncoding.EncodeToString(root[:]) + "\n2026-11-21T19:00:00.000000123Z\n"; string(cp.SignedBody()) != want {
		t.Fatalf("signed body %q, want %q", cp.SignedBody(), want)
	}
	if err := Verify(cp, key.Public()); err != nil {
		t.Fatal(err)
	}
	file, err := Encode(cp)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(file)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed, cp) {
		t.Fatalf("parse round trip:\n%+v\n%+v", parsed, cp)
	}
	if err := Verify(parsed, key.Public()); err != nil {
		t.Fatal(err)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		name   string
		modify func(c *Checkpoint)
		key    any
	}{
		{"wrong key", nil, newKey(t).Public()},
		{"P-384 key", nil, p384.Public()},
		{"size changed", func(c *Checkpoint) { c.Size++ }, nil},
		{"root changed", func(c *Checkpoint) { c.RootHash = append([]byte{1}, c.RootHash[1:]...) }, nil},
		{"origin changed", func(c *Checkpoint) { c.Origin += "x" }, nil},
		{"time changed", func(c *Checkpoint) { c.Time = c.Time.Add(time.Nanosecond) }, nil},
		{"signature flipped", func(c *Checkpoint) { c.Signature = append([]byte{}, c.Signature...); c.Signature[8] ^= 1 }, nil},
		{"key id of another key", func(c *Checkpoint) { c.KeyID = strings.Repeat("a", 64) }, nil},
		{"no signature", func(c *Checkpoint) { c.Signature = nil }, nil},
		{"short root", func(c *Checkpoint) { c.RootHash = c.RootHash[:31] }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cp
			if tc.modify != nil {
				tc.modify(&c)
			}
			k := tc.key
			if k == nil {
				k = key.Public()
			}
			if err := Verify(c, k); err == nil {
				t.Fatal("verified")
			}
		})
	}

	for _, bad := range []string{
		``,
		`{}`,
		`[]`,
		strings.Replace(string(file), `"size"`, `"sizes"`, 1),
		string(file) + `{}`,
		strings.Replace(string(file), `"origin": "ward/test.example"`, `"origin": "a\nb"`, 1),
		strings.Replace(string(file), `"size": 42`, `"size": -1`, 1),
		strings.Replace(string(file), `"size": 42`, `"size": 1e3`, 1),
		strings.Replace(string(file), cp.KeyID, strings.ToUpper(cp.KeyID), 1),
		string(file) + strings.Repeat(" ", MaxFileSize),
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse accepted %q", bad)
		}
	}

	if _, err := Sign(p384, testOrigin, 1, root[:], at); err == nil {
		t.Error("signed with a P-384 key")
	}
	if _, err := Sign(key, testOrigin, 1, root[:16], at); err == nil {
		t.Error("signed a 16-byte root")
	}
}

func TestPublicKeyPEM(t *testing.T) {
	key := newKey(t)
	b, err := MarshalPublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKeyPEM(b)
	if err != nil || !key.PublicKey.Equal(pub) {
		t.Fatalf("round trip: %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	b384, _ := MarshalPublicKeyPEM(p384.Public())
	for _, bad := range [][]byte{nil, []byte("junk"), b384, append(b, "trailing"...)} {
		if _, err := ParsePublicKeyPEM(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// TestSignAsMatchesSign: SignAs (the key ID computed once by its caller)
// makes the checkpoint Sign makes, and a wrong key ID does not verify.
func TestSignAsMatchesSign(t *testing.T) {
	key := newKey(t)
	root := sha256.Sum256([]byte("root"))
	at := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	want := must(Sign(key, testOrigin, 7, root[:], at))
	got := must(SignAs(key, want.KeyID, testOrigin, 7, root[:], at))
	if err := Verify(got, key.Public()); err != nil {
		t.Fatal(err)
	}
	if got.KeyID != want.KeyID || string(got.SignedBody()) != string(want.SignedBody()) {
		t.Fatalf("SignAs made %+v, Sign %+v", got, want)
	}
	other := must(Sign(newKey(t), testOrigin, 7, root[:], at))
	bad := must(SignAs(key, other.KeyID, testOrigin, 7, root[:], at))
	if err := Verify(bad, key.Public()); err == nil {
		t.Fatal("a checkpoint naming another key's ID verified")
	}
	if _, err := SignAs(key, want.KeyID, testOrigin, 7, root[:5], at); err == nil {
		t.Fatal("a short root hash was signed")
	}
}
