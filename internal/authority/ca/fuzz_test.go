package ca

import (
	"context"
	"encoding/json"
	"testing"
)

// FuzzDNSName: names from registration entries either get a clear error or
// end up, unchanged, as a DNS SAN of a certificate Go can parse.
func FuzzDNSName(f *testing.F) {
	c, _ := initCA(f, Config{}, nil)
	pub := p256(f).Public()
	for _, s := range []string{"api.svc", "*.example.org", "a-b.c", "-a", "a..b", "xn--bcher-kva.example", "a b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckDNSName(name) != nil {
			return
		}
		chain, err := c.SignX509SVID(context.Background(), SVIDRequest{ID: wid("/w"), PublicKey: pub, DNSNames: []string{name}})
		if err != nil {
			t.Fatalf("accepted name %q but signing failed: %v", name, err)
		}
		if len(chain[0].DNSNames) != 1 || chain[0].DNSNames[0] != name {
			t.Fatalf("DNS SAN %v, want %q", chain[0].DNSNames, name)
		}
	})
}

// FuzzDecodeState: whatever bytes the store returns, decoding fails cleanly
// or yields records whose keys parsed.
func FuzzDecodeState(f *testing.F) {
	c, st := initCA(f, Config{}, nil)
	_ = c
	kv, err := st.Get(context.Background(), "ca/prod-eu.example.org/state")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kv.Value)
	f.Add([]byte(`{"version":1,"keys":[{"kind":"root","key":""}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeState(b)
		if err != nil {
			return
		}
		for _, k := range s.Keys {
			if k.signer == nil || (k.Kind != KindJWT && k.cert == nil) {
				t.Fatalf("decoded key %s without parsed material", k.ID)
			}
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatal(err)
		}
	})
}
