package federation

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
