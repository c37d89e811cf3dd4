package scan

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

// FuzzJudgeCRL: whatever a CRL server answers, judging it never panics,
// and "revoked" or "good" come only with a CRL that verified under the
// issuer (an unusable CRL always says why).
func FuzzJudgeCRL(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz issuer"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	issuer, _ := x509.ParseCertificate(der)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(77)}
	good, _ := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(77), RevocationTime: time.Now()}}}, issuer, key)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("not a CRL"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r CRL
		judgeCRL(&r, b, leaf, issuer, time.Now())
		if r.Status != "" && r.Error != "" || r.Status == "" && r.Error == "" {
			t.Fatalf("status %q with error %q", r.Status, r.Error)
		}
		if r.Status != "" {
			rl, err := x509.ParseRevocationList(b)
			if err != nil || rl.CheckSignatureFrom(issuer) != nil {
				t.Fatalf("status %q from a CRL that does not verify", r.Status)
			}
		}
	})
}

// The attack: a scanned server's certificate names a CRL on a link-local
// address (a cloud metadata service) or an unspecified one; the scanner
// never connects there.
func TestCRLFetchRefusesSpecialDestinations(t *testing.T) {
	e := &endpoint{s: New(Options{Timeout: 2 * time.Second})}
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:80/x.crl", "http://0.0.0.0:80/x.crl", "http://224.0.0.1/x.crl"} {
		_, err := e.fetchCRL(context.Background(), u)
		if err == nil || !strings.Contains(err.Error(), "never fetched from") {
			t.Errorf("%s: %v, want a refusal before connecting", u, err)
		}
	}
}
