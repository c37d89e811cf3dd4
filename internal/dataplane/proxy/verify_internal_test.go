package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// swapSource serves one bundle that a test replaces.
type swapSource struct {
	mu sync.Mutex
	b  *x509bundle.Bundle
}

func (s *swapSource) set(b *x509bundle.Bundle) { s.mu.Lock(); s.b = b; s.mu.Unlock() }

func (s *swapSource) GetX509SVID() (*x509svid.SVID, error) { return nil, nil }

func (s *swapSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil || s.b.TrustDomain() != td {
		return nil, errors.New("no bundle for " + td.Name())
	}
	return s.b, nil
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: k}
}

func (ca *testCA) leaf(t testing.TB, id string, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, k.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestPeerChainCacheIsExact runs what the verification cache must never
// let through: a chain whose root left the bundle, an expired chain, a
// chain of the same SPIFFE ID signed by another CA, and a cached entry
// past its validity window are each verified afresh (and refused); only
// the same chain under the same bundle within its validity is a hit.
func TestPeerChainCacheIsExact(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	const id = "spiffe://prod.example/ns/shop/web"
	caA, caB := newTestCA(t, "A"), newTestCA(t, "B")
	src := &swapSource{}
	src.set(x509bundle.FromX509Authorities(td, []*x509.Certificate{caA.cert}))
	p := &Proxy{src: src, chains: newChainCache()}
	now := time.Now()
	good := []*x509.Certificate{caA.leaf(t, id, now.Add(-time.Minute), now.Add(time.Hour))}

	verify := func(certs []*x509.Certificate) error { _, _, _, err := p.verifyPeer(certs); return err }
	counts := func() (int64, int64) { return p.chainHits.Load(), p.chainMisses.Load() }

	if err := verify(good); err != nil {
		t.Fatal(err)
	}
	if err := verify(good); err != nil {
		t.Fatal(err)
	}
	if h, m := counts(); h != 1 || m != 1 {
		t.Fatalf("same chain, same bundle: hits %d misses %d, want 1 and 1", h, m)
	}

	// The same SPIFFE ID signed by a CA outside the bundle: a miss, refused.
	forged := []*x509.Certificate{caB.leaf(t, id, now.Add(-time.Minute), now.Add(time.Hour))}
	if err := verify(forged); err == nil {
		t.Fatal("a chain of another CA with a cached peer's SPIFFE ID was accepted")
	}

	// The bundle no longer holds A (its root rotated out): the cached
	// chain is verified again and refused.
	src.set(x509bundle.FromX509Authorities(td, []*x509.Certificate{caB.cert}))
	if err := verify(good); err == nil {
		t.Fatal("a cached chain was accepted after its root left the bundle")
	}
	// The bundle back with A plus B: a different bundle, verified afresh, accepted.
	src.set(x509bundle.FromX509Authorities(td, []*x509.Certificate{caA.cert, caB.cert}))
	_, m0 := counts()
	if err := verify(good); err != nil {
		t.Fatal(err)
	}
	if _, m := counts(); m != m0+1 {
		t.Fatal("a chain was taken from the cache under a different bundle")
	}

	// An expired leaf is refused and never cached.
	expired := []*x509.Certificate{caA.leaf(t, id, now.Add(-2*time.Hour), now.Add(-time.Minute))}
	for i := 0; i < 2; i++ {
		if err := verify(expired); err == nil || !strings.Contains(err.Error(), "x509svid") {
			t.Fatalf("expired leaf: %v", err)
		}
	}

	// A cached entry whose window has passed (the clock moved beyond a
	// certificate's NotAfter) is not used: forge the entry's window into
	// the past and see a fresh verification.
	b, _ := src.GetX509BundleForTrustDomain(td)
	k := chainKey(td.Name(), b.X509Authorities(), good)
	v := p.chains.get(k)
	if v == nil {
		t.Fatal("no cache entry for the good chain")
	}
	v.to = now.Add(-time.Second)
	_, m0 = counts()
	if err := verify(good); err != nil {
		t.Fatal(err)
	}
	if _, m := counts(); m != m0+1 {
		t.Fatal("a cache entry past its validity window was used")
	}

	// Bounded.
	for i := 0; i < chainCacheMax+10; i++ {
		p.chains.put([32]byte{byte(i), byte(i >> 8)}, &verifiedChain{})
	}
	if n := p.chains.len(); n > chainCacheMax {
		t.Fatalf("cache holds %d entries, bound %d", n, chainCacheMax)
	}
}

// BenchmarkPeerVerify is the handshake's peer verification (VerifyConnection)
// of a leaf under a root: verified (the first time a chain is seen under a
// bundle) and cached (every later handshake of the same chain).
func BenchmarkPeerVerify(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	ca := newTestCA(b, "A")
	src := &swapSource{}
	src.set(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert}))
	chain := []*x509.Certificate{ca.leaf(b, "spiffe://prod.example/ns/shop/web", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))}
	for _, cached := range []bool{false, true} {
		name := "verified"
		if cached {
			name = "cached"
		}
		b.Run(name, func(b *testing.B) {
			p := &Proxy{src: src, chains: newChainCache()}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if !cached {
					p.chains = newChainCache()
				}
				if _, _, _, err := p.verifyPeer(chain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPeerChainCacheKeepsNoHandshakeBuffer runs a flood of distinct valid
// chains, each as crypto/tls hands it over: certificates parsed out of one
// copy of a Certificate message padded to its 256 KiB maximum (extra
// certificates the verification never uses; the peer need not even hold
// the leaf's key, VerifyConnection runs before CertificateVerify). A
// cached entry must hold only its own certificates' bytes, not the
// message: the cache's memory is bounded by its entry count times a
// chain, not times 256 KiB.
func TestPeerChainCacheKeepsNoHandshakeBuffer(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	ca := newTestCA(t, "A")
	src := &swapSource{}
	src.set(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert}))
	p := &Proxy{src: src, chains: newChainCache()}
	now := time.Now()
	const flood, msgMax = 32, 256 << 10
	for i := 0; i < flood; i++ {
		der := ca.leaf(t, "spiffe://prod.example/ns/shop/web", now.Add(-time.Minute), now.Add(time.Hour)).Raw
		msg := make([]byte, msgMax)
		copy(msg, der)
		leaf, err := x509.ParseCertificate(msg[:len(der)])
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := p.verifyPeer([]*x509.Certificate{leaf}); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.chains.len(); n != flood {
		t.Fatalf("%d cache entries, want %d", n, flood)
	}
	held := 0
	p.chains.mu.Lock()
	for _, v := range p.chains.m {
		for _, chain := range v.chains {
			for _, c := range chain {
				held += cap(c.Raw)
			}
		}
	}
	p.chains.mu.Unlock()
	if held > flood*8<<10 {
		t.Fatalf("the cache holds %d KiB of certificate buffers for %d chains (a handshake message each?)", held>>10, flood)
	}
}
