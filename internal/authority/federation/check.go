package federation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxBundleSize bounds a bundle document read from an endpoint or a file.
const MaxBundleSize = 1 << 20

// ErrRefused marks a bundle that was fetched but not accepted (malformed,
// another trust domain, a sequence that went backwards, a key that does not
// verify). The last good bundle stays in use.
var ErrRefused = errors.New("federation: bundle refused")

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// ParseBundle parses an untrusted SPIFFE bundle document of trust domain td
// and checks it as CheckBundle does. It is what every foreign bundle goes
// through: a bootstrap file, a stored copy and each fetched document.
func ParseBundle(td spiffeid.TrustDomain, doc []byte) (*spiffebundle.Bundle, error) {
	if len(doc) > MaxBundleSize {
		return nil, refused("bundle of %s is %d bytes, more than the %d allowed", td, len(doc), MaxBundleSize)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return nil, refused("bundle of %s is malformed: %v", td, err)
	}
	if err := CheckBundle(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// CheckBundle refuses a bundle that is not fit to validate IDs of td: it
// must be td's, every X.509 authority must be a CA certificate whose SPIFFE
// URI SANs (if any) name td only and whose self-signature (if self-issued)
// verifies, and every JWT authority must be an ECDSA, Ed25519 or RSA (at
// least 2048 bits) key.
func CheckBundle(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	if b == nil {
		return refused("no bundle for %s", td)
	}
	if b.TrustDomain() != td {
		return refused("bundle is for trust domain %q, expected %q: trust domains are never merged", b.TrustDomain(), td)
	}
	auths := b.X509Authorities()
	if len(auths) == 0 && len(b.JWTAuthorities()) == 0 {
		return refused("bundle of %s has no authorities", td)
	}
	for i, c := range auths {
		if !c.BasicConstraintsValid || !c.IsCA {
			return refused("x509-svid authority %d of %s (%s) is not a CA certificate", i, td, c.Subject)
		}
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			id, err := spiffeid.FromURI(u)
			if err != nil {
				return refused("x509-svid authority %d of %s has a bad SPIFFE URI %q: %v", i, td, u, err)
			}
			if id.TrustDomain() != td {
				return refused("x509-svid authority %d in the bundle of %s names trust domain %q: a bundle may only hold keys of its own trust domain", i, td, id.TrustDomain())
			}
		}
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			if err := c.CheckSignatureFrom(c); err != nil {
				return refused("x509-svid authority %d of %s (%s) is self-issued but its signature does not verify: %v", i, td, c.Subject, err)
			}
		}
	}
	for kid, k := range b.JWTAuthorities() {
		switch pk := k.(type) {
		case *ecdsa.PublicKey, ed25519.PublicKey:
		case *rsa.PublicKey:
			if pk.N.BitLen() < 2048 {
				return refused("jwt-svid authority %q of %s is a %d-bit RSA key; at least 2048 bits are required", kid, td, pk.N.BitLen())
			}
		default:
			return refused("jwt-svid authority %q of %s has an unsupported key type %T", kid, td, k)
		}
	}
	return nil
}

// CheckUpdate decides whether next may replace prev (the last good bundle of
// the same trust domain): its spiffe_sequence must not go backwards, must be
// present when prev had one, and must grow when the content changes.
func CheckUpdate(prev, next *spiffebundle.Bundle) error {
	if prev == nil {
		return nil
	}
	if prev.TrustDomain() != next.TrustDomain() {
		return refused("bundle is for trust domain %q, expected %q", next.TrustDomain(), prev.TrustDomain())
	}
	ps, pok := prev.SequenceNumber()
	if !pok {
		return nil
	}
	ns, nok := next.SequenceNumber()
	switch {
	case !nok:
		return refused("bundle of %s has no spiffe_sequence, the last good one had %d", next.TrustDomain(), ps)
	case ns < ps:
		return refused("bundle of %s went backwards: spiffe_sequence %d is older than the last good %d (rollback or a stale endpoint)", next.TrustDomain(), ns, ps)
	case ns == ps && !sameKeys(prev, next):
		return refused("bundle of %s changed its keys without a new spiffe_sequence (still %d)", next.TrustDomain(), ns)
	}
	return nil
}

// sameKeys compares the authorities of two bundles (not hint or sequence).
func sameKeys(a, b *spiffebundle.Bundle) bool {
	ax, bx := a.X509Authorities(), b.X509Authorities()
	if len(ax) != len(bx) {
		return false
	}
	for i := range ax {
		if !ax[i].Equal(bx[i]) {
			return false
		}
	}
	aj, bj := a.JWTAuthorities(), b.JWTAuthorities()
	if len(aj) != len(bj) {
		return false
	}
	for kid, k := range aj {
		o, ok := bj[kid]
		if !ok {
			return false
		}
		ka, err1 := x509.MarshalPKIXPublicKey(k)
		kb, err2 := x509.MarshalPKIXPublicKey(o)
		if err1 != nil || err2 != nil || !bytes.Equal(ka, kb) {
			return false
		}
	}
	return true
}
