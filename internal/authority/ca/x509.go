package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a positive random serial of up to 128 bits.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func (c *CA) tdURI() *url.URL { return c.cfg.TrustDomain.ID().URL() }

func (c *CA) caTemplate(kind Kind, id string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	skid, err := hex.DecodeString(id)
	if err != nil {
		return nil, fmt.Errorf("key ID %q: %w", id, err)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"ward"},
			CommonName:   fmt.Sprintf("ward %s CA %s", kind, c.cfg.TrustDomain.Name()),
			SerialNumber: id,
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		URIs:                  []*url.URL{c.tdURI()},
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          skid,
	}, nil
}

func (c *CA) newRoot(now time.Time) (*keyRecord, error) {
	rec, key, err := c.newRecord(KindRoot, now, now.Add(c.cfg.RootTTL))
	if err != nil {
		return nil, err
	}
	tmpl, err := c.caTemplate(KindRoot, rec.ID, rec.NotBefore, rec.NotAfter)
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLen = 1
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign root for %q: %w", c.cfg.TrustDomain, err)
	}
	return rec.withCert(der)
}

func (c *CA) newIntermediate(root *keyRecord, now time.Time) (*keyRecord, error) {
	rec, key, err := c.newRecord(KindIntermediate, now, minTime(now.Add(c.cfg.IntermediateTTL), root.NotAfter))
	if err != nil {
		return nil, err
	}
	rec.Parent = root.ID
	if rec.NotBefore.Before(root.NotBefore) {
		rec.NotBefore = root.NotBefore
	}
	tmpl, err := c.caTemplate(KindIntermediate, rec.ID, rec.NotBefore, rec.NotAfter)
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, key.Public(), root.signer)
	if err != nil {
		return nil, fmt.Errorf("sign intermediate for %q with root %s: %w", c.cfg.TrustDomain, root.ID, err)
	}
	return rec.withCert(der)
}

func (k *keyRecord) withCert(der []byte) (*keyRecord, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new %s certificate: %w", k.Kind, err)
	}
	k.Cert, k.cert = der, cert
	return k, nil
}

// SVIDRequest asks for an X509-SVID.
type SVIDRequest struct {
	// ID must be a workload ID in the CA's trust domain (non-empty path).
	ID spiffeid.ID
	// PublicKey is the SVID's key: ECDSA (P-256/P-384/P-521), RSA (≥ 2048
	// bits) or Ed25519.
	PublicKey crypto.PublicKey
	// TTL: 0 means Config.SVIDTTL; capped at Config.MaxSVIDTTL and at the
	// signing intermediate's expiry.
	TTL time.Duration
	// DNSNames are added as DNS SANs; the first also becomes the subject CN.
	DNSNames []string
}

// SignX509SVID signs an X509-SVID with the active intermediate. It returns
// the chain leaf first, then the intermediate; the roots are in Bundle.
func (c *CA) SignX509SVID(ctx context.Context, req SVIDRequest) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.checkID(req.ID); err != nil {
		return nil, err
	}
	ku, err := leafKeyUsage(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: SVID for %s: %v", ErrInvalidRequest, req.ID, err)
	}
	for _, n := range req.DNSNames {
		if err := CheckDNSName(n); err != nil {
			return nil, fmt.Errorf("%w: SVID for %s: %v", ErrInvalidRequest, req.ID, err)
		}
	}
	v := c.view.Load()
	if v.inter == nil {
		return nil, ErrNotInitialized
	}
	now := c.clock()
	ttl := req.TTL
	if ttl <= 0 {
		ttl = c.cfg.SVIDTTL
	}
	ttl = min(ttl, c.cfg.MaxSVIDTTL)
	notAfter := minTime(now.Add(ttl), v.inter.cert.NotAfter)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("active intermediate %s of %q has expired; run Tick or Rotate", v.inter.ID, c.cfg.TrustDomain)
	}
	notBefore := now.Add(-c.cfg.Backdate)
	if notBefore.Before(v.inter.cert.NotBefore) {
		notBefore = v.inter.cert.NotBefore
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"ward"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if len(req.DNSNames) > 0 {
		tmpl.Subject.CommonName = req.DNSNames[0]
	}
	c.x509Signed.Add(1)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, v.inter.cert, req.PublicKey, v.inter.signer)
	if err != nil {
		return nil, fmt.Errorf("sign X509-SVID for %s: %w", req.ID, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse X509-SVID for %s: %w", req.ID, err)
	}
	return []*x509.Certificate{leaf, v.inter.cert}, nil
}

// SignedX509SVIDs is how many X509-SVIDs this CA has signed (attempted:
// each is a private-key signature) since it was opened.
func (c *CA) SignedX509SVIDs() uint64 { return c.x509Signed.Load() }

func (c *CA) checkID(id spiffeid.ID) error {
	if id.IsZero() {
		return fmt.Errorf("%w: SPIFFE ID is empty", ErrInvalidRequest)
	}
	if !id.MemberOf(c.cfg.TrustDomain) {
		return fmt.Errorf("%w: %s is outside trust domain %q", ErrInvalidRequest, id, c.cfg.TrustDomain)
	}
	if id.Path() == "" {
		return fmt.Errorf("%w: %s is the trust domain ID; an SVID needs a path (spiffe://%s/...)", ErrInvalidRequest, id, c.cfg.TrustDomain.Name())
	}
	return nil
}

// leafKeyUsage validates the SVID public key and returns the key usage the
// X509-SVID standard requires for it: digitalSignature, plus
// keyEncipherment for RSA only.
func leafKeyUsage(pub crypto.PublicKey) (x509.KeyUsage, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return 0, fmt.Errorf("ECDSA public key is empty")
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return 0, fmt.Errorf("ECDSA curve %s not supported; use P-256 or P-384", k.Curve.Params().Name)
		}
		if _, err := k.ECDH(); err != nil {
			return 0, fmt.Errorf("ECDSA public key is not a valid curve point")
		}
		return x509.KeyUsageDigitalSignature, nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil || k.N.BitLen() < 2048 {
			return 0, fmt.Errorf("RSA public key must have at least 2048 bits")
		}
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return 0, fmt.Errorf("Ed25519 public key has %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		return x509.KeyUsageDigitalSignature, nil
	default:
		return 0, fmt.Errorf("public key type %T not supported; use ECDSA, RSA or Ed25519", pub)
	}
}

// CheckDNSName accepts host names (letters, digits, hyphens, dots) with an
// optional leading "*." wildcard label.
func CheckDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("DNS name %q must be 1–253 characters", n)
	}
	labels := strings.Split(strings.TrimPrefix(n, "*."), ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("DNS name %q has an invalid label %q", n, l)
		}
		for i := 0; i < len(l); i++ {
			ch := l[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-') {
				return fmt.Errorf("DNS name %q has an invalid character %q", n, ch)
			}
		}
	}
	return nil
}
