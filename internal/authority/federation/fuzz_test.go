package federation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// FuzzParseBundle feeds untrusted bundle documents (what an endpoint or a
// bootstrap file may hold) through ward's checks: no panic, and whatever is
// accepted survives a round trip and a sequence check against itself.
func FuzzParseBundle(f *testing.F) {
	a := newCA(f, tdA)
	doc := marshal(f, bundleOf(f, a))
	f.Add(doc)
	f.Add([]byte(`{"keys":[],"spiffe_sequence":1}`))
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","kid":"k","x":"AA","y":"AA"}],"spiffe_refresh_hint":-1}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"RSA","x5c":["AAAA"]}]}`))
	prev := bundleOf(f, a)
	f.Fuzz(func(t *testing.T, data []byte) {
		td := spiffeid.RequireTrustDomainFromString("a.example")
		b, err := ParseBundle(td, data)
		if err != nil {
			return
		}
		_ = CheckUpdate(prev, b)
		if err := CheckUpdate(b, b); err != nil {
			t.Fatalf("a bundle is refused as an update of itself: %v", err)
		}
		out, err := b.Marshal()
		if err != nil {
			return
		}
		again, err := ParseBundle(td, out)
		if err != nil {
			t.Fatalf("an accepted bundle does not parse after marshalling: %v\n%s", err, out)
		}
		if !sameKeys(b, again) {
			t.Fatal("keys changed in a round trip")
		}
	})
}

// FuzzParseWitnessAnswer feeds untrusted answers of a peer's checkpoint
// endpoint through the witness's parsing: no panic, and whatever is
// accepted is a well-formed checkpoint of the peer's log with a P-256 key
// and a bounded proof.
func FuzzParseWitnessAnswer(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := make([]byte, 32)
	cp, err := checkpoint.Sign(key, Origin(tdA), 9, root, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		f.Fatal(err)
	}
	pemKey, _ := checkpoint.MarshalPublicKeyPEM(key.Public())
	good, _ := json.Marshal(WitnessAnswer{Checkpoint: cp, PublicKeyPEM: string(pemKey), From: 3, Consistency: [][]byte{root, root}})
	f.Add(good)
	f.Add([]byte(`{"checkpoint":{},"public_key_pem":""}`))
	f.Add([]byte(`{"checkpoint":null,"consistency":[null]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ans, pub, err := parseWitnessAnswer(tdA, data)
		if err != nil {
			return
		}
		if ans.Checkpoint.Origin != Origin(tdA) || ans.Checkpoint.Check() != nil || len(ans.Consistency) > maxProofHashes {
			t.Fatalf("accepted %+v", ans)
		}
		if _, err := checkpoint.P256Key(pub); err != nil {
			t.Fatalf("accepted key: %v", err)
		}
	})
}
