package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/keyutil"
)

func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKeyIDCacheExactAndBounded: cached key IDs equal keyutil.CAKeyID for
// every key, and the cache never holds more than keyIDCacheMax entries.
func TestKeyIDCacheExactAndBounded(t *testing.T) {
	kc := &keyIDCache{m: map[string]string{}}
	a, b := selfSigned(t), selfSigned(t)
	for i := 0; i < 2; i++ { // miss, then hit
		for _, c := range []*x509.Certificate{a, b} {
			got, err := kc.get(c)
			want, _ := keyutil.CAKeyID(c.PublicKey)
			if err != nil || got != want {
				t.Fatalf("cached key ID %q, %v; want %q", got, err, want)
			}
		}
	}
	for i := 0; i < keyIDCacheMax+10; i++ {
		kc.get(&x509.Certificate{PublicKey: a.PublicKey, RawSubjectPublicKeyInfo: []byte{byte(i), byte(i >> 8), 1}})
	}
	if n := len(kc.m); n > keyIDCacheMax {
		t.Fatalf("cache holds %d entries, bound %d", n, keyIDCacheMax)
	}
}
