package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// aeadSuites12 are the TLS 1.2 suites offered when tls.min_version is 1.2:
// ECDHE with AES-GCM or ChaCha20-Poly1305 only (no CBC, no RSA key
// exchange). TLS 1.3 suites are all AEAD and not configurable in Go. In
// FIPS 140-3 mode Go further restricts both lists to AES-GCM.
var aeadSuites12 = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// baseTLS is the protocol part shared by both directions. CurvePreferences
// stays nil on purpose: Go's default list puts the hybrid post-quantum
// X25519MLKEM768 first (and, in FIPS mode, keeps only approved groups).
// Session tickets are off here; with tls.session_resumption the
// per-connection configs resume TLS 1.3 sessions (session.go), verified at
// every resumed handshake as at a full one. Go's TLS server never accepts
// 0-RTT early data.
func (p *Proxy) baseTLS() *tls.Config {
	c := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
	if p.cfg.TLS.MinVersion == "1.2" {
		c.MinVersion = tls.VersionTLS12
		c.CipherSuites = aeadSuites12
	}
	return c
}

// serverTLS terminates mTLS: the client must present an X509-SVID that
// chains to the bundle of its trust domain; which IDs may connect is the
// policy's decision, made after the handshake. It is the template of
// inboundTLS: serveInbound uses it through withChainKeys. The certificate
// is built once per SVID (certCache); the peer's chain is verified by
// withChainKeys's VerifyConnection (verify.go), Go's own verification is
// off (RequireAnyClientCert).
func (p *Proxy) serverTLS() *tls.Config {
	c := p.baseTLS()
	c.ClientAuth = tls.RequireAnyClientCert
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.certs.get(p.src) }
	return c
}

// federatedOnly is the proxy's bundle source for verifying peers: a peer
// is verified with the bundle of its own trust domain only (go-spiffe looks
// it up by the peer's ID; trust domains are never merged), and a trust
// domain the Workload API serves no bundle for (neither this one nor a
// federated one) fails with errNotFederated, which the handshake's metrics
// and access log name (trust_domain_not_federated).
type federatedOnly struct{ src x509bundle.Source }

func (f federatedOnly) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := f.src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, &notFederatedError{td: td.Name(), err: err}
	}
	return b, nil
}

// notFederatedError: the peer's trust domain is not federated with this
// one (no bundle of it on the Workload API).
type notFederatedError struct {
	td  string
	err error
}

func (e *notFederatedError) Error() string {
	return fmt.Sprintf("trust domain %q is not federated with this one (no bundle of it on the Workload API: federate the authorities, "+
		"and give this proxy's entry --federates-with %s): %v", e.td, e.td, e.err)
}

func (e *notFederatedError) Unwrap() error { return e.err }

// reasonNotFederated is the handshake failure reason of a peer whose trust
// domain is not federated.
const reasonNotFederated = "trust_domain_not_federated"

// withChainKeys returns a per-connection copy of the server template for
// inbound listener listener whose peer verification (the handshake's only
// one, verify.go, also on a resumed session) stores the CA key IDs of the
// verified chains in *keys, for the deny-list's tainted keys at the
// decision and on every re-check. With session resumption its tickets
// are bound to listener (session.go).
func (p *Proxy) withChainKeys(tmpl *tls.Config, listener string, keys *[]string) *tls.Config {
	c := tmpl.Clone()
	c.VerifyConnection = p.verifyConnection(tlsconfig.AuthorizeAny(), nil, keys)
	p.sessionTicketFuncs(c, listener)
	serverVerdictConfig(c)
	return c
}

// clientTLS dials mTLS and requires the server to present id, through no
// CA key the policy's deny-list names as tainted. It is built per
// connection: the verification stores the server chain's CA key IDs in
// *keys, so that the connection is closed when a later policy version
// taints one of them (recheck). Go's verification is off
// (InsecureSkipVerify: a SPIFFE peer is named by its ID, not a host name);
// VerifyConnection (verify.go) is the one verification, on full and
// resumed handshakes alike. With session resumption, sessions are cached
// under listener, id, serverName, remote and the own leaf (session.go).
func (p *Proxy) clientTLS(listener string, id spiffeid.ID, serverName, remote string, keys *[]string) *tls.Config {
	c := p.baseTLS()
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.certs.get(p.src) }
	var view *sessionView
	if p.sessions != nil {
		if own, err := p.certs.current(p.src); err == nil {
			view = &sessionView{cache: p.sessions, gen: p.sessions.gen.Load(), own: own, prefix: sessionKeyPrefix(listener, id.String(), serverName, remote, own)}
			c.SessionTicketsDisabled = false
			c.ClientSessionCache = view
			// The certificate the cache key names.
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return own.cert, nil }
		}
	}
	c.InsecureSkipVerify = true
	verify := p.verifyConnection(tlsconfig.AuthorizeID(id), func(got spiffeid.ID, k []string) error {
		if set := p.engine.Current(); set != nil {
			if tk := set.TaintedKeyOf(got.TrustDomain().Name(), k); tk != "" {
				return fmt.Errorf("x509svid: server %s presents a certificate chain through tainted CA key %s (policy deny-list): refusing; the server must fetch a re-issued SVID", id, tk)
			}
		}
		return nil
	}, keys)
	c.VerifyConnection = verify
	if view != nil {
		lifetime := time.Duration(p.cfg.TLS.SessionLifetime)
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verify(cs); err != nil {
				return err
			}
			view.verified(cs, lifetime)
			return nil
		}
	}
	c.ServerName = serverName
	// A remote ward proxy then says why it refuses (verdict.go).
	c.NextProtos = []string{ALPNVerdict, "http/1.1"}
	return c
}

// chainKeyIDs returns the CA key IDs (keyutil.CAKeyID, the key IDs `ward ca
// taint` takes) of every certificate in every verified chain, root
// included.
func chainKeyIDs(chains [][]*x509.Certificate) ([]string, error) {
	if len(chains) == 0 {
		return nil, errors.New("x509svid: no verified certificate chain for the peer")
	}
	var ids []string
	for _, chain := range chains {
		for _, c := range chain {
			kid, err := keyIDs.get(c)
			if err != nil {
				return nil, fmt.Errorf("x509svid: key ID of %q in the peer's chain: %w", c.Subject, err)
			}
			if !slices.Contains(ids, kid) {
				ids = append(ids, kid)
			}
		}
	}
	return ids, nil
}

// keyIDCache memoizes CA key IDs by a certificate's raw
// SubjectPublicKeyInfo: the same intermediates and roots come with every
// connection, and MarshalPKIXPublicKey+SHA-256 per certificate per
// connection showed up in BenchmarkNewConnection. The ID is a function of
// the parsed key, which is a function of those bytes, so a hit is exact.
// Bounded: when full it starts over (peers cannot grow it without limit).
type keyIDCache struct {
	mu sync.Mutex
	m  map[string]string
}

const keyIDCacheMax = 4096

var keyIDs = &keyIDCache{m: map[string]string{}}

func (k *keyIDCache) get(c *x509.Certificate) (string, error) {
	k.mu.Lock()
	kid, ok := k.m[string(c.RawSubjectPublicKeyInfo)]
	k.mu.Unlock()
	if ok {
		return kid, nil
	}
	kid, err := keyutil.CAKeyID(c.PublicKey)
	if err != nil || len(c.RawSubjectPublicKeyInfo) == 0 {
		return kid, err
	}
	k.mu.Lock()
	if len(k.m) >= keyIDCacheMax {
		clear(k.m)
	}
	k.m[string(c.RawSubjectPublicKeyInfo)] = kid
	k.mu.Unlock()
	return kid, nil
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	}
	return tls.VersionName(v)
}

// handshakeReason classifies a handshake error for metrics and logs.
func handshakeReason(err error) string {
	var ne net.Error
	var ae tls.AlertError
	var ue x509.UnknownAuthorityError
	var ce x509.CertificateInvalidError
	msg := err.Error()
	var nf *notFederatedError
	switch {
	case errors.As(err, &nf):
		return reasonNotFederated
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(msg, "didn't provide a certificate"):
		return "no_client_certificate"
	case strings.Contains(msg, "unexpected ID") || strings.Contains(msg, "unauthorized"):
		return "unauthorized_id"
	case errors.As(err, &ue) || errors.As(err, &ce) || strings.Contains(msg, "x509svid") ||
		strings.Contains(msg, "certificate") || strings.Contains(msg, "X509 bundle"):
		return "bad_certificate"
	case strings.Contains(msg, "protocol version") || strings.Contains(msg, "unsupported versions"):
		return "protocol_version"
	case strings.Contains(msg, "no cipher suite") || strings.Contains(msg, "no mutually supported") ||
		strings.Contains(msg, "no supported") || strings.Contains(msg, "handshake failure"):
		return "no_shared_parameters"
	case errors.As(err, &ae):
		return "alert"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		strings.Contains(msg, "connection reset"):
		return "eof"
	case strings.Contains(msg, "first record does not look like a TLS handshake") || strings.Contains(msg, "unexpected message") ||
		strings.Contains(msg, "oversized record"):
		return "not_tls"
	}
	return "other"
}
