package nodeapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/x509pop"
)

func TestX509PopChallengeSignatures(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	nonce := make([]byte, x509pop.NonceSize)
	rand.Read(nonce)
	other := make([]byte, x509pop.NonceSize)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"ecdsa", ec}, {"rsa", rk}, {"ed25519", ed}} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := x509pop.Sign(tc.key, nonce)
			if err != nil {
				t.Fatal(err)
			}
			if err := x509pop.Verify(tc.key.Public(), nonce, sig); err != nil {
				t.Fatal(err)
			}
			if x509pop.Verify(tc.key.Public(), other, sig) == nil {
				t.Fatal("signature verifies over another nonce")
			}
			sig[len(sig)-1] ^= 1
			if x509pop.Verify(tc.key.Public(), nonce, sig) == nil {
				t.Fatal("tampered signature verifies")
			}
		})
	}
	if _, err := x509pop.Sign(ec, nonce[:5]); err == nil {
		t.Fatal("short nonce signed")
	}
}

func selfSigned(t testing.TB, isCA bool, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "n"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func TestVerifyX509Pop(t *testing.T) {
	root, rootKey := selfSigned(t, true, nil, nil)
	leaf, _ := selfSigned(t, false, root, rootKey)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, sels, err := verifyX509Pop([][]byte{leaf.Raw}, pool, time.Now()); err != nil || len(sels) != 4 {
		t.Fatalf("valid chain: %v %v", sels, err)
	}
	for name, chain := range map[string][][]byte{
		"empty":       nil,
		"garbage":     {[]byte("x")},
		"ca as leaf":  {root.Raw},
		"too long":    make([][]byte, maxChain+1),
		"self-signed": {func() []byte { c, _ := selfSigned(t, false, nil, nil); return c.Raw }()},
	} {
		if _, _, err := verifyX509Pop(chain, pool, time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := verifyX509Pop([][]byte{leaf.Raw}, pool, time.Now().Add(2*time.Hour)); err == nil {
		t.Error("expired node certificate accepted")
	}
}

func FuzzVerifyX509Pop(f *testing.F) {
	root, rootKey := selfSigned(f, true, nil, nil)
	leaf, _ := selfSigned(f, false, root, rootKey)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	f.Add(leaf.Raw, root.Raw)
	f.Add([]byte{0x30, 0x82}, []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		l, _, err := verifyX509Pop([][]byte{a, b}, pool, time.Now())
		if err == nil && (l == nil || l.IsCA) {
			t.Fatal("accepted a chain without a usable leaf")
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	f.Add(der)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := parseCSR(b, true)
		if err == nil && pub == nil {
			t.Fatal("nil key accepted")
		}
	})
}
