package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// fedSource adds federated bundles to a Workload API source, as an agent
// serves them to an entry with --federates-with.
type fedSource struct {
	*gsw.X509Source
	fed map[spiffeid.TrustDomain]*x509bundle.Bundle
}

func (s *fedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if b, ok := s.fed[td]; ok {
		return b, nil
	}
	return s.X509Source.GetX509BundleForTrustDomain(td)
}

// TestForeignKeyForgeriesRefusedAtHandshake runs the cross-cluster
// forgeries against an inbound proxy federated with third.example, whose
// CA key the attacker holds (a compromised or hostile federated cluster):
// an SVID of another federated trust domain (other.example) and an SVID of
// the proxy's own trust domain, both signed with third.example's key, are
// refused at the handshake; an SVID of third.example itself is not (the
// forgeries are otherwise well-formed).
func TestForeignKeyForgeriesRefusedAtHandshake(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(e.api.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xs.Close() })
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "third.example root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, &rootKey.PublicKey, rootKey)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherRoot := mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "other.example root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, &otherKey.PublicKey, otherKey)
	third, other := spiffeid.RequireTrustDomainFromString("third.example"), spiffeid.RequireTrustDomainFromString("other.example")
	src := &fedSource{X509Source: xs, fed: map[spiffeid.TrustDomain]*x509bundle.Bundle{
		third: x509bundle.FromX509Authorities(third, []*x509.Certificate{root}),
		other: x509bundle.FromX509Authorities(other, []*x509.Certificate{otherRoot}),
	}}
	cfg := &proxy.Config{
		WorkloadAPISocket: e.api.Addr, // validated; WithX509Source replaces it
		PolicyFiles:       []string{e.policyDir}, DenyListFile: e.denyFile, PolicyPollInterval: cfgDur(100 * time.Millisecond),
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: e.app.l.Addr().String(), PeerIdentity: proxy.PeerIdentityProxyV2,
			Service: proxy.Service{Name: "api", Port: 8443, Classification: "internal"}}},
	}
	log := &syncbuf.Buffer{}
	srv, _ := startProxy(t, ctx, cfg, proxy.WithX509Source(src), proxy.WithAccessLog(log))
	waitFor(t, "server policy loaded", 10*time.Second, func() bool { _, ok := srv.Engine().Status(); return ok })

	leaf := func(id string) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id)
		c := mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true},
			root, &k.PublicKey, rootKey)
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k}
	}
	try := func(id string) error {
		c, err := tls.Dial("tcp", srv.Addr("api").String(), &tls.Config{Certificates: []tls.Certificate{leaf(id)}, InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if err == io.EOF {
			return nil // handshake passed, then closed (policy)
		}
		return err
	}
	for i, id := range []string{"spiffe://other.example/ns/shop/web", webID} {
		_ = try(id)
		waitFor(t, "the access log line of "+id, 10*time.Second, func() bool { return len(log.JSONLines()) == i+1 })
	}
	if n := len(findLog(log, "outcome", "handshake_failed")); n != 2 {
		t.Fatalf("forged SVIDs of other.example and of the proxy's own trust domain: %d handshake failures, want 2: %v", n, log.JSONLines())
	}
	if e.app.count(webID)+e.app.count("spiffe://other.example/ns/shop/web") != 0 {
		t.Fatal("a forged SVID reached the app")
	}
	// Control: third.example's own SVID passes the handshake (the policy
	// then denies it: no permit names it).
	_ = try("spiffe://third.example/ns/x")
	waitFor(t, "the control connection's decision", 10*time.Second, func() bool { return len(findLog(log, "outcome", "denied")) > 0 })
	if n := len(findLog(log, "outcome", "handshake_failed")); n != 2 {
		t.Fatalf("control SVID of third.example failed the handshake: %v", log.JSONLines())
	}
}

func mustCert(t *testing.T, tmpl, parent *x509.Certificate, pub, signer any) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
