package scan

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// handshakeResult is what Go's TLS client saw.
type handshakeResult struct {
	state         tls.ConnectionState
	certs         []*x509.Certificate
	ocsp          []byte
	requested     bool
	required      bool
	acceptableCAs [][]byte
	evidence      string
	err           error
}

// goSuites: every suite Go's client implements, insecure ones included
// (listed on first use).
var goSuites = sync.OnceValue(func() []uint16 {
	var out []uint16
	for _, s := range tls.CipherSuites() {
		out = append(out, s.ID)
	}
	for _, s := range tls.InsecureCipherSuites() {
		out = append(out, s.ID)
	}
	return out
})

// goHandshake runs a full handshake with Go's TLS client offering all it
// can, presenting no client certificate: the chain as sent, the stapled
// OCSP response, the negotiated parameters, and whether the server asks
// for a client certificate and fails the handshake without one.
func (e *endpoint) goHandshake(ctx context.Context) *handshakeResult {
	r := &handshakeResult{}
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		r.err = ctx.Err()
		return r
	}
	defer func() { <-e.sem }()
	e.probes.Add(1)
	raw, err := e.dial(ctx)
	if err != nil {
		r.err = err
		return r
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()
	raw.SetDeadline(time.Now().Add(e.s.opts.Timeout))
	cfg := &tls.Config{
		InsecureSkipVerify: true, // verified below, against the bundle given
		ServerName:         e.sni,
		MinVersion:         tls.VersionTLS10,
		MaxVersion:         tls.VersionTLS13,
		CipherSuites:       goSuites(),
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			r.requested = true
			r.acceptableCAs = cri.AcceptableCAs
			return &tls.Certificate{}, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			r.state = cs
			r.certs = cs.PeerCertificates
			r.ocsp = cs.OCSPResponse
			return nil
		},
	}
	c := tls.Client(raw, cfg)
	err = c.HandshakeContext(ctx)
	if err == nil {
		r.state = c.ConnectionState()
	}
	switch {
	case err != nil && r.requested:
		r.required = true
		r.evidence = "the handshake without a client certificate failed: " + err.Error()
	case err != nil:
		r.err = err
	case r.requested && r.state.Version == tls.VersionTLS13:
		// TLS 1.3: the server judges the (empty) client certificate after
		// the client's Finished; a server that requires one says so with
		// an alert on the first read.
		c.SetReadDeadline(time.Now().Add(min(e.s.opts.Timeout, time.Second)))
		var b [1]byte
		_, rerr := c.Read(b[:])
		var ne net.Error
		switch {
		case rerr == nil:
			r.evidence = "the server accepted a connection without a client certificate"
		case errors.As(rerr, &ne) && ne.Timeout():
			r.evidence = "the server kept the connection without a client certificate open"
		default:
			r.required = true
			r.evidence = "the server ended the connection without a client certificate: " + rerr.Error()
		}
	case r.requested:
		r.evidence = "the server completed the handshake without a client certificate"
	}
	return r
}

// finish fills in the negotiated handshake, client authentication and the
// chain, from Go's handshake or else from a cleartext flight.
func (e *endpoint) finish(ctx context.Context, r *Result, hs *handshakeResult, flight *serverHello) {
	opts := e.s.opts
	var certs []*x509.Certificate
	var staple []byte
	if hs != nil {
		n := &Negotiated{}
		if hs.state.Version != 0 {
			n.Version = Version(hs.state.Version)
			n.Suite = SuiteByID(hs.state.CipherSuite).Name
			if hs.state.CurveID != 0 {
				n.Group = GroupByID(uint16(hs.state.CurveID)).Name
			}
		}
		if hs.err != nil {
			n.Error = hs.err.Error()
		}
		r.Negotiated = n
		certs, staple = hs.certs, hs.ocsp
		r.ClientAuth = ClientAuth{Requested: hs.requested, Required: hs.required, Evidence: hs.evidence}
		for _, dn := range hs.acceptableCAs {
			r.ClientAuth.AcceptableCAs = append(r.ClientAuth.AcceptableCAs, rdnString(dn))
		}
	}
	if len(certs) == 0 && flight != nil {
		for _, der := range flight.certs {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				break
			}
			certs = append(certs, c)
		}
		staple = flight.ocsp
		if flight.certRequest && !r.ClientAuth.Requested {
			r.ClientAuth.Requested = true
			r.ClientAuth.Evidence = "CertificateRequest in the server's first flight (whether it is required was not tested: Go's client could not complete a handshake)"
		}
	}
	if len(certs) == 0 {
		return
	}
	ch := &Chain{Bundle: opts.RootsName}
	for _, c := range certs {
		ch.Certificates = append(ch.Certificates, describe(c))
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots: opts.Roots, Intermediates: inter, CurrentTime: opts.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	ch.Trusted = err == nil
	if err != nil {
		ch.VerifyError = err.Error()
	}
	// Names: the SPIFFE ID when one is expected (SPIFFE clients ignore
	// DNS names, and the SNI is then only a routing name, as through ward's
	// gateway); else the host name: --server-name, or the target's host
	// (a DNS name or an IP).
	host := opts.ServerName
	if host == "" {
		host, _, _ = net.SplitHostPort(r.Target)
	}
	if opts.SPIFFEID != "" {
		ch.SPIFFEID = opts.SPIFFEID
		ok := spiffeID(leaf) == opts.SPIFFEID
		ch.SPIFFEIDMatch = &ok
		host = ""
	}
	if host != "" {
		ch.Hostname = host
		ok := leaf.VerifyHostname(host) == nil
		ch.HostnameMatch = &ok
	}
	if len(staple) > 0 {
		ch.OCSP = parseStaple(staple, leaf, certs)
	}
	if opts.CheckCRLs {
		// The verified chain names each certificate's issuer (the root
		// from the bundle included); else the chain as served.
		path := certs
		if len(verified) > 0 {
			path = verified[0]
		}
		ch.CRLs = e.checkCRLs(ctx, path)
	}
	r.Chain = ch
}

func parseStaple(staple []byte, leaf *x509.Certificate, certs []*x509.Certificate) *OCSP {
	o := &OCSP{Stapled: true}
	var issuer *x509.Certificate
	if len(certs) > 1 {
		issuer = certs[1]
	}
	resp, err := ocsp.ParseResponseForCert(staple, leaf, issuer)
	if err != nil {
		o.Error = err.Error()
		return o
	}
	o.ThisUpdate, o.NextUpdate = resp.ThisUpdate, resp.NextUpdate
	switch resp.Status {
	case ocsp.Good:
		o.Status = "good"
	case ocsp.Revoked:
		o.Status, o.RevokedAt = "revoked", resp.RevokedAt
	default:
		o.Status = "unknown"
	}
	return o
}

func describe(c *x509.Certificate) Certificate {
	sum := sha256.Sum256(c.Raw)
	d := Certificate{
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: c.SerialNumber.Text(16),
		SPIFFEID: spiffeID(c), DNSNames: c.DNSNames, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		SignatureAlgorithm: c.SignatureAlgorithm.String(), IsCA: c.IsCA,
		SelfSigned:  c.CheckSignatureFrom(c) == nil && c.Subject.String() == c.Issuer.String(),
		SHA256:      hex.EncodeToString(sum[:]),
		OCSPServers: c.OCSPServer, CRLDistribution: c.CRLDistributionPoints,
	}
	for _, ip := range c.IPAddresses {
		d.IPAddresses = append(d.IPAddresses, ip.String())
	}
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		d.KeyType, d.KeyBits = "RSA", k.N.BitLen()
	case *ecdsa.PublicKey:
		d.KeyType, d.KeyBits = "ECDSA "+k.Curve.Params().Name, k.Curve.Params().BitSize
	case ed25519.PublicKey:
		d.KeyType, d.KeyBits = "Ed25519", 256
	default:
		d.KeyType = c.PublicKeyAlgorithm.String()
	}
	return d
}

func spiffeID(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

// rdnString renders a DER distinguished name (a CertificateRequest's
// acceptable CAs) as text, or as hex when it does not parse.
func rdnString(der []byte) string {
	var seq pkix.RDNSequence
	if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) > 0 {
		return hex.EncodeToString(der)
	}
	var n pkix.Name
	n.FillFromRDNSequence(&seq)
	return n.String()
}
