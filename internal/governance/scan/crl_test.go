package scan_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/governance/scan"
)

// crlPKI is a root, an intermediate and a leaf whose certificates name
// CRLs on a local HTTP server (the root's CRL for the intermediate, the
// intermediate's for the leaf).
type crlPKI struct {
	root, inter, leaf          *x509.Certificate
	rootKey, interKey, leafKey crypto.Signer
	pool                       *x509.CertPool
	srv                        *httptest.Server
	mu                         sync.Mutex
	crls                       map[string][]byte // path -> DER (or anything)
}

func newCRLPKI(t *testing.T) *crlPKI {
	t.Helper()
	p := &crlPKI{crls: map[string][]byte{}, pool: x509.NewCertPool()}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		b, ok := p.crls[r.URL.Path]
		p.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(p.srv.Close)
	now := time.Now()
	mk := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
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
	p.root, p.rootKey = mk(&x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "crl test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, nil)
	p.pool.AddCert(p.root)
	p.inter, p.interKey = mk(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "crl test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{"ldap://ldap.invalid/root", p.srv.URL + "/root.crl"}},
		p.root, p.rootKey)
	p.leaf, p.leafKey = mk(&x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "crl.test"}, DNSNames: []string{"crl.test"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, CRLDistributionPoints: []string{p.srv.URL + "/inter.crl"}},
		p.inter, p.interKey)
	return p
}

// crl signs a CRL as issuer listing serials, valid until next.
func crl(t *testing.T, issuer *x509.Certificate, key crypto.Signer, next time.Time, serials ...int64) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: next}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (p *crlPKI) set(path string, b []byte) {
	p.mu.Lock()
	p.crls[path] = b
	p.mu.Unlock()
}

// serve runs a TLS 1.3 server presenting leaf and intermediate.
func (p *crlPKI) serve(t *testing.T) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{p.leaf.Raw, p.inter.Raw}, PrivateKey: p.leafKey}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.(*tls.Conn).Handshake()
			}(c)
		}
	}()
	return l.Addr().String()
}

func crlOf(r *scan.Result, cert int) *scan.CRL {
	for i := range r.Chain.CRLs {
		if c := &r.Chain.CRLs[i]; c.Certificate == cert {
			return c
		}
	}
	return nil
}

// The failure: a server keeps serving a certificate its issuer revoked.
// The scan fetches the CRLs the chain names (http only: the ldap URL is
// skipped) from a local CRL server, checks their issuer's signature and
// reports the revoked leaf (critical); a good intermediate is not. A CRL
// signed by someone else, a stale one, one too large and one missing are
// reported as unusable, never as "good".
func TestCRLRevokedLeaf(t *testing.T) {
	p := newCRLPKI(t)
	target := p.serve(t)
	opts := scan.Options{ServerName: "crl.test", Roots: p.pool, CheckCRLs: true, Timeout: 10 * time.Second}
	p.set("/root.crl", crl(t, p.root, p.rootKey, time.Now().Add(time.Hour), 5))
	p.set("/inter.crl", crl(t, p.inter, p.interKey, time.Now().Add(time.Hour), 3, 77))

	r := scanOne(t, target, opts)
	if c := crlOf(r, 0); c == nil || c.Status != "revoked" || c.URL != p.srv.URL+"/inter.crl" {
		t.Fatalf("leaf CRL check: %+v (all: %+v)", c, r.Chain.CRLs)
	}
	if c := crlOf(r, 1); c == nil || c.Status != "good" || c.Error != "" {
		t.Fatalf("intermediate CRL check: %+v", c)
	}
	if len(r.Chain.CRLs) != 2 {
		t.Fatalf("CRL checks %+v, want one per certificate (the ldap URL and the root skipped)", r.Chain.CRLs)
	}
	wantRules(t, r, "crl-revoked")
	noRules(t, r, "crl-invalid", "crl-unavailable")
	for _, f := range r.Findings {
		if f.Rule == "crl-revoked" && (!strings.Contains(f.Evidence, "crl.test") || !strings.Contains(f.Evidence, "4d")) {
			t.Errorf("crl-revoked evidence does not name the leaf and its serial: %s", f.Evidence)
		}
	}

	// Not listed: good, no finding.
	p.set("/inter.crl", crl(t, p.inter, p.interKey, time.Now().Add(time.Hour), 3))
	r = scanOne(t, target, opts)
	noRules(t, r, "crl-revoked", "crl-invalid", "crl-unavailable")

	// A CRL listing the leaf but signed by the root (not the leaf's
	// issuer) is not believed; a stale one neither.
	p.set("/inter.crl", crl(t, p.root, p.rootKey, time.Now().Add(time.Hour), 77))
	r = scanOne(t, target, opts)
	wantRules(t, r, "crl-invalid")
	noRules(t, r, "crl-revoked")
	p.set("/inter.crl", crl(t, p.inter, p.interKey, time.Now().Add(-time.Second), 77))
	r = scanOne(t, target, opts)
	if c := crlOf(r, 0); c == nil || !strings.Contains(c.Error, "stale") {
		t.Fatalf("stale CRL: %+v", c)
	}
	// Too large (bounded read), garbage, missing.
	p.set("/inter.crl", make([]byte, scan.MaxCRLSize+10))
	r = scanOne(t, target, opts)
	if c := crlOf(r, 0); c == nil || !c.Unavailable || !strings.Contains(c.Error, "more than") {
		t.Fatalf("oversized CRL: %+v", c)
	}
	wantRules(t, r, "crl-unavailable")
	p.set("/inter.crl", []byte("not a CRL"))
	if c := crlOf(scanOne(t, target, opts), 0); c == nil || !strings.Contains(c.Error, "malformed") {
		t.Fatalf("garbage CRL: %+v", c)
	}
	p.mu.Lock()
	delete(p.crls, "/inter.crl")
	p.mu.Unlock()
	if c := crlOf(scanOne(t, target, opts), 0); c == nil || !c.Unavailable || !strings.Contains(c.Error, "404") {
		t.Fatalf("missing CRL: %+v", c)
	}
	// Off unless asked for.
	opts.CheckCRLs = false
	if r := scanOne(t, target, opts); len(r.Chain.CRLs) != 0 {
		t.Fatalf("CRLs checked without CheckCRLs: %+v", r.Chain.CRLs)
	}
}
