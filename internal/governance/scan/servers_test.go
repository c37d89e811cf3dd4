package scan_test

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// need finds a tool the test runs; without it the test is skipped, except
// in CI, where scripts/test.sh installs it and its absence is a failure.
func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: scripts/test.sh installs it (Debian package %s)", tool, debianPackage(tool))
		}
		t.Skipf("%s not found: install the Debian package %s (scripts/test.sh does) to run this test", tool, debianPackage(tool))
	}
	return p
}

func debianPackage(tool string) string {
	if tool == "testssl" {
		return "testssl.sh"
	}
	return tool
}

// testCA is a root that issues the servers' certificates.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
	pem  string // path of the root's PEM file
}

func newCA(t testing.TB, dir string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "scan test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: c, key: key, pool: x509.NewCertPool(), pem: filepath.Join(dir, "root.pem")}
	ca.pool.AddCert(c)
	writePEM(t, ca.pem, "CERTIFICATE", der)
	return ca
}

// issue writes a server certificate for dnsName with a key of kind "rsa"
// or "ecdsa" into dir and returns the certificate and key file paths;
// edits change the template first.
func (ca *testCA) issue(t testing.TB, dir, name, kind, dnsName string, edits ...func(*x509.Certificate)) (string, string) {
	t.Helper()
	var key crypto.Signer
	var err error
	if kind == "rsa" {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	for _, e := range edits {
		e(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startOpenSSL runs `openssl s_server` on a loopback port with args and
// returns its HOST:PORT; it is killed when the test ends.
func startOpenSSL(t testing.TB, cert, key string, args ...string) string {
	t.Helper()
	bin := need(t, "openssl")
	argv := append([]string{"s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key}, args...)
	cmd := exec.Command(bin, argv...)
	stdin, err := cmd.StdinPipe() // s_server ends at EOF on its stdin
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		stdin.Close()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() { // keep draining: s_server logs every connection
			if a, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok && !sent {
				addr <- a
				sent = true
			}
		}
		if !sent {
			close(addr)
		}
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("openssl s_server %s did not start: %s", strings.Join(args, " "), stderr.String())
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			t.Fatalf("openssl s_server printed %q", a)
		}
		return a
	case <-time.After(20 * time.Second):
		t.Fatalf("openssl s_server %s did not start in time: %s", strings.Join(args, " "), stderr.String())
	}
	return ""
}

// servers are the openssl endpoints the tests scan and compare.
type servers struct {
	ca                                      *testCA
	legacy, legacyAll, modern, mtls, mtls12 string
}

// startServers starts the weak and strong openssl servers:
//   - legacy: TLS 1.0 only, every suite Debian's OpenSSL still has at
//     security level 0 (NULL, anonymous, static RSA, CBC), RSA certificate;
//   - legacyAll: TLS 1.0 to 1.3 with the same suites, in the server's
//     order of preference (-serverpref);
//   - modern: TLS 1.3 only, ECDSA P-256 certificate;
//   - mtls, mtls12: OpenSSL's defaults (TLS 1.2 and 1.3; TLS 1.2 only)
//     requiring a client certificate (-Verify).
func startServers(t testing.TB) *servers {
	t.Helper()
	dir := t.TempDir()
	ca := newCA(t, dir)
	rc, rk := ca.issue(t, dir, "rsa", "rsa", "legacy.test")
	ec, ek := ca.issue(t, dir, "ecdsa", "ecdsa", "modern.test")
	weak := []string{"-cipher", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"}
	return &servers{
		ca:        ca,
		legacy:    startOpenSSL(t, rc, rk, append(weak, "-tls1")...),
		legacyAll: startOpenSSL(t, rc, rk, append(weak, "-min_protocol", "TLSv1", "-serverpref")...),
		modern:    startOpenSSL(t, ec, ek, "-tls1_3"),
		mtls:      startOpenSSL(t, ec, ek, "-Verify", "1", "-verifyCAfile", ca.pem, "-CAfile", ca.pem),
		mtls12:    startOpenSSL(t, ec, ek, "-tls1_2", "-Verify", "1", "-verifyCAfile", ca.pem, "-CAfile", ca.pem),
	}
}

func (s *servers) String() string {
	return fmt.Sprintf("legacy %s, legacy-all %s, modern %s, mtls %s, mtls12 %s", s.legacy, s.legacyAll, s.modern, s.mtls, s.mtls12)
}

// ocspServer is where the test certificates say their OCSP responder is
// (nothing listens there: scans never fetch).
const ocspServer = "http://127.0.0.1:9/ocsp"

// startStapling runs an openssl TLS 1.3 server whose certificate names an
// OCSP responder and which staples a response of status (ocsp.Good,
// ocsp.Revoked) signed by the CA, or staples nothing when status < 0.
func startStapling(t testing.TB, ca *testCA, status int) string {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "ocsp", "ecdsa", "ocsp.test", func(c *x509.Certificate) { c.OCSPServer = []string{ocspServer} })
	if status < 0 {
		return startOpenSSL(t, certFile, keyFile, "-tls1_3")
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := ocsp.Response{Status: status, SerialNumber: leaf.SerialNumber, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}
	if status == ocsp.Revoked {
		tmpl.RevokedAt, tmpl.RevocationReason = now.Add(-time.Minute), ocsp.KeyCompromise
	}
	der, err := ocsp.CreateResponse(ca.cert, ca.cert, tmpl, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	respFile := filepath.Join(dir, "ocsp.der")
	if err := os.WriteFile(respFile, der, 0o600); err != nil {
		t.Fatal(err)
	}
	return startOpenSSL(t, certFile, keyFile, "-tls1_3", "-status_file", respFile)
}
