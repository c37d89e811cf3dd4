package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Peer verification, once per handshake and cheap when the peer is known.
//
// Both directions verify the peer's X509-SVID in the handshake's
// VerifyConnection, on the certificates crypto/tls has already parsed (Go's
// own verification is off: InsecureSkipVerify, RequireAnyClientCert; the
// SPIFFE verification below is the only one). VerifyConnection also runs
// on a resumed session, so no handshake ever skips it.
//
// The chain verification itself (x509svid.Verify: the leaf's SPIFFE ID and
// key usages, then the chain to the bundle of its trust domain, two or
// more ECDSA verifications) is memoized: the result is a function of the
// exact certificate bytes the peer sent, the exact authorities of the
// bundle in force and the time. The cache key is a SHA-256 over the first
// two; an entry is used only within the validity window every certificate
// of its chains shares (checked against the clock at each use), so a
// change of bundle (rotation, a root removed, a federated bundle replaced)
// or an expiry is always a fresh verification. Only successful
// verifications are kept, bounded. What the cache does not hold is
// decided per connection, as before: the authorizer (server ID of an
// outbound listener), tainted CA keys, and the policy decision with the
// deny-list (serials, IDs, chain keys) on inbound. The proof of
// possession (the peer's CertificateVerify signature) is crypto/tls's, on
// every full handshake.

// verifiedChain is one successful verification.
type verifiedChain struct {
	id     spiffeid.ID
	chains [][]*x509.Certificate
	keys   []string  // chainKeyIDs(chains)
	from   time.Time // latest NotBefore of any certificate in chains
	to     time.Time // earliest NotAfter
}

func (v *verifiedChain) validAt(now time.Time) bool {
	return !now.Before(v.from) && !now.After(v.to)
}

// chainCache holds verifiedChains by chainKey. When full it starts over.
type chainCache struct {
	mu sync.Mutex
	m  map[[32]byte]*verifiedChain
}

const chainCacheMax = 1024

func newChainCache() *chainCache { return &chainCache{m: map[[32]byte]*verifiedChain{}} }

func (c *chainCache) get(k [32]byte) *verifiedChain {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *chainCache) put(k [32]byte, v *verifiedChain) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= chainCacheMax {
		clear(c.m)
	}
	c.m[k] = v
}

func (c *chainCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// chainKey digests what a verification depends on besides the time: the
// trust domain, the bundle's authorities and the peer's certificates, each
// length-prefixed.
func chainKey(td string, authorities, certs []*x509.Certificate) [32]byte {
	h := sha256.New()
	field := func(h hash.Hash, tag byte, b []byte) {
		var n [9]byte
		n[0] = tag
		binary.BigEndian.PutUint64(n[1:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field(h, 't', []byte(td))
	for _, a := range authorities {
		field(h, 'a', a.Raw)
	}
	for _, c := range certs {
		field(h, 'c', c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// staticBundle is a bundle source of one trust domain's bundle, so that
// the verification uses exactly the bundle the cache key was made of.
type staticBundle struct {
	td spiffeid.TrustDomain
	b  *x509bundle.Bundle
}

func (s staticBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td {
		return nil, errors.New("x509svid: no bundle for trust domain " + td.Name())
	}
	return s.b, nil
}

// verifyPeer verifies certs, a peer's chain as the handshake parsed it,
// against the bundle of the leaf's trust domain (federatedOnly: its own
// bundle, never another's), from the cache when it holds this exact chain
// under this exact bundle and the time is within the chain's validity. It
// returns the peer's SPIFFE ID, the verified chains and their CA key IDs
// (a copy the caller may keep). Errors are x509svid's (and
// notFederatedError), as handshakeReason expects.
func (p *Proxy) verifyPeer(certs []*x509.Certificate) (spiffeid.ID, [][]*x509.Certificate, []string, error) {
	bundles := federatedOnly{p.src}
	if len(certs) == 0 {
		return verifyUncached(certs, bundles) // its error
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return verifyUncached(certs, bundles)
	}
	b, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return verifyUncached(certs, bundles)
	}
	k := chainKey(id.TrustDomain().Name(), b.X509Authorities(), certs)
	now := time.Now()
	if v := p.chains.get(k); v != nil && v.validAt(now) {
		p.chainHits.Add(1)
		return v.id, v.chains, slices.Clone(v.keys), nil
	}
	p.chainMisses.Add(1)
	got, chains, err := x509svid.Verify(certs, staticBundle{td: id.TrustDomain(), b: b})
	if err != nil {
		return got, chains, nil, err
	}
	keys, err := chainKeyIDs(chains)
	if err != nil {
		return got, chains, nil, err
	}
	v := &verifiedChain{id: got, chains: ownChains(chains, certs), keys: keys}
	for i, chain := range v.chains {
		for j, c := range chain {
			if i == 0 && j == 0 || c.NotBefore.After(v.from) {
				v.from = c.NotBefore
			}
			if i == 0 && j == 0 || c.NotAfter.Before(v.to) {
				v.to = c.NotAfter
			}
		}
	}
	if len(v.chains) > 0 && v.validAt(now) {
		p.chains.put(k, v)
	}
	return got, chains, slices.Clone(keys), nil
}

// ownChains returns chains with every certificate the peer sent (one of
// certs) parsed again from a copy of its bytes, for the cache to keep. The
// certificates crypto/tls parsed point into its copy of the whole
// Certificate message (up to 256 KiB, any number of extra certificates the
// verification never used): a cached entry holding one of them would keep
// the whole message, and a peer, before it proves its key (VerifyConnection
// runs before CertificateVerify), could park 256 KiB per entry. The
// bundle's certificates are ours and kept as they are.
func ownChains(chains [][]*x509.Certificate, certs []*x509.Certificate) [][]*x509.Certificate {
	copies := map[*x509.Certificate]*x509.Certificate{}
	out := make([][]*x509.Certificate, len(chains))
	for i, chain := range chains {
		out[i] = make([]*x509.Certificate, len(chain))
		for j, c := range chain {
			out[i][j] = c
			if !slices.Contains(certs, c) {
				continue
			}
			if cp, ok := copies[c]; ok {
				out[i][j] = cp
				continue
			}
			cp, err := x509.ParseCertificate(bytes.Clone(c.Raw))
			if err != nil { // it parsed once: cannot happen; keep nothing of it
				return nil
			}
			copies[c], out[i][j] = cp, cp
		}
	}
	return out
}

func verifyUncached(certs []*x509.Certificate, bundles x509bundle.Source) (spiffeid.ID, [][]*x509.Certificate, []string, error) {
	id, chains, err := x509svid.Verify(certs, bundles)
	if err != nil {
		return id, chains, nil, err
	}
	keys, err := chainKeyIDs(chains)
	return id, chains, keys, err
}

// verifyConnection is the handshake's one peer verification: verifyPeer,
// then authorize (the outbound listener's expected server ID, or any), then
// extra (nil, or the tainted-key check) with the chains' CA key IDs, which
// it stores in *keys once all passed.
func (p *Proxy) verifyConnection(authorize tlsconfig.Authorizer, extra func(spiffeid.ID, []string) error, keys *[]string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		id, chains, k, err := p.verifyPeer(cs.PeerCertificates)
		if err != nil {
			return err
		}
		if err := authorize(id, chains); err != nil {
			return err
		}
		if len(k) == 0 {
			return errors.New("x509svid: no verified certificate chain for the peer")
		}
		if extra != nil {
			if err := extra(id, k); err != nil {
				return err
			}
		}
		*keys = k
		return nil
	}
}

// svidCert is the proxy's own certificate for the handshake, built once
// per X509-SVID the source hands out (go-spiffe's GetCertificate builds a
// new one per handshake), with the SHA-256 of its leaf (session.go binds
// sessions to it).
type svidCert struct {
	svid *x509svid.SVID
	cert *tls.Certificate
	fp   [32]byte
}

type certCache struct{ cur atomic.Pointer[svidCert] }

func (cc *certCache) get(src x509svid.Source) (*tls.Certificate, error) {
	sc, err := cc.current(src)
	if err != nil {
		return nil, err
	}
	return sc.cert, nil
}

// current returns the svidCert of src's current SVID.
func (cc *certCache) current(src x509svid.Source) (*svidCert, error) {
	s, err := src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	if s == nil || len(s.Certificates) == 0 {
		return nil, errors.New("the X509-SVID from the Workload API holds no certificate")
	}
	if c := cc.cur.Load(); c != nil && c.svid == s {
		return c, nil
	}
	cert := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, c := range s.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	sc := &svidCert{svid: s, cert: cert, fp: sha256.Sum256(s.Certificates[0].Raw)}
	cc.cur.Store(sc)
	return sc, nil
}
