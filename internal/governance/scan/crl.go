package scan

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// CRL is one certificate of the chain checked against one certificate
// revocation list it names (its CRL distribution points).
type CRL struct {
	// Certificate is the index in Chain.Certificates (0: the leaf).
	Certificate int    `json:"certificate"`
	URL         string `json:"url"`
	// Status is "good" (not listed) or "revoked"; empty when the CRL could
	// not be used (Error says why).
	Status     string    `json:"status,omitempty"`
	ThisUpdate time.Time `json:"this_update,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	// Unavailable: the CRL could not be fetched (network, HTTP status, too
	// large, too slow); otherwise an Error means it was fetched but could
	// not be trusted (malformed, not signed by the issuer, stale).
	Unavailable bool   `json:"unavailable,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Bounds of the CRL checks: what a scanned server's certificates can make
// the scanner fetch. Only http and https URLs, at most maxCRLsPerCert per
// certificate and maxCRLFetches per endpoint, each at most MaxCRLSize
// bytes within the scan's Timeout, no redirects, no proxy, and never an
// address that is link-local (cloud metadata services), multicast or
// unspecified.
const (
	MaxCRLSize     = 4 << 20
	maxCRLsPerCert = 2
	maxCRLFetches  = 6
)

// checkCRLs checks every certificate of chain but a self-signed root
// against the http(s) CRLs it names; chain[i+1] is chain[i]'s issuer (the
// verified chain when there is one, else the chain as served).
func (e *endpoint) checkCRLs(ctx context.Context, chain []*x509.Certificate) []CRL {
	var out []CRL
	fetched := map[string]fetchedCRL{}
	for i, c := range chain {
		if isSelfSigned(c) {
			continue
		}
		var issuer *x509.Certificate
		if i+1 < len(chain) {
			issuer = chain[i+1]
		}
		n := 0
		for _, u := range c.CRLDistributionPoints {
			if n == maxCRLsPerCert {
				break
			}
			if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
				continue // ldap:// and the like are not fetched
			}
			n++
			f, ok := fetched[u]
			if !ok {
				if len(fetched) == maxCRLFetches {
					out = append(out, CRL{Certificate: i, URL: u, Unavailable: true, Error: fmt.Sprintf("not fetched: at most %d CRLs are fetched per endpoint", maxCRLFetches)})
					continue
				}
				f.der, f.err = e.fetchCRL(ctx, u)
				fetched[u] = f
			}
			r := CRL{Certificate: i, URL: u}
			if f.err != nil {
				r.Unavailable, r.Error = true, f.err.Error()
			} else {
				judgeCRL(&r, f.der, c, issuer, e.s.opts.Now())
			}
			out = append(out, r)
		}
	}
	return out
}

type fetchedCRL struct {
	der []byte
	err error
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil && c.Subject.String() == c.Issuer.String()
}

// judgeCRL fills r from the CRL der for certificate c issued by issuer
// (nil: not in the chain): it must parse, be signed by the issuer and be
// current; then c is revoked when its serial is listed.
func judgeCRL(r *CRL, der []byte, c, issuer *x509.Certificate, now time.Time) {
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		r.Error = "malformed CRL: " + err.Error()
		return
	}
	r.ThisUpdate, r.NextUpdate = rl.ThisUpdate, rl.NextUpdate
	if issuer == nil {
		r.Error = "the certificate's issuer is not in the chain: the CRL's signature cannot be checked"
		return
	}
	if err := rl.CheckSignatureFrom(issuer); err != nil {
		r.Error = "the CRL is not signed by the certificate's issuer " + issuer.Subject.String() + ": " + err.Error()
		return
	}
	if !rl.NextUpdate.IsZero() && now.After(rl.NextUpdate) {
		r.Error = "stale CRL: its next update was due " + rl.NextUpdate.UTC().Format(time.RFC3339)
		return
	}
	r.Status = "good"
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			r.Status, r.RevokedAt = "revoked", e.RevocationTime.UTC()
			return
		}
	}
}

// fetchCRL GETs u within the scan's timeout, at most MaxCRLSize bytes.
func (e *endpoint) fetchCRL(ctx context.Context, u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, e.s.opts.Timeout)
	defer cancel()
	d := &net.Dialer{Control: refuseSpecialDestinations}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, TLSHandshakeTimeout: e.s.opts.Timeout,
			ResponseHeaderTimeout: e.s.opts.Timeout, DisableKeepAlives: true, MaxResponseHeaderBytes: 16 << 10},
		CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("CRL fetches do not follow redirects") },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the CRL: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the CRL: %s", resp.Status)
	}
	if resp.ContentLength > MaxCRLSize {
		return nil, fmt.Errorf("the CRL is %d bytes, more than the %d fetched", resp.ContentLength, MaxCRLSize)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, MaxCRLSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the CRL: %w", err)
	}
	if len(der) > MaxCRLSize {
		return nil, fmt.Errorf("the CRL is more than the %d bytes fetched", MaxCRLSize)
	}
	return der, nil
}

// refuseSpecialDestinations keeps CRL fetches (URLs a scanned server
// chose) off link-local (cloud metadata services), multicast and
// unspecified addresses, and the metadata services outside link-local
// (AWS's IPv6 fd00:ec2::254, Alibaba's 100.100.100.200). It runs on the
// address dialled (after DNS), and looks through the IPv6 forms that carry
// an IPv4 address: IPv4-mapped, IPv4-compatible (::/96) and NAT64
// (64:ff9b::/96, where a DNS64 resolver puts every IPv4-only name) are
// judged by the IPv4 address they carry; local-use NAT64
// (64:ff9b:1::/48), 6to4 (2002::/16) and Teredo (2001::/32) are refused
// (their IPv4 part is the relay's choice or obfuscated).
func refuseSpecialDestinations(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return err
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		b := a.As16()
		switch {
		case netip.MustParsePrefix("64:ff9b::/96").Contains(a),
			netip.MustParsePrefix("::/96").Contains(a) && !a.IsUnspecified() && !a.IsLoopback():
			a = netip.AddrFrom4([4]byte(b[12:]))
		case netip.MustParsePrefix("64:ff9b:1::/48").Contains(a), netip.MustParsePrefix("2002::/16").Contains(a),
			netip.MustParsePrefix("2001::/32").Contains(a):
			return fmt.Errorf("a CRL is never fetched from %s (NAT64 local-use, 6to4 or Teredo: the IPv4 address it reaches is not checked)", a)
		}
	}
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return fmt.Errorf("a CRL is never fetched from %s (link-local, multicast or unspecified)", ap.Addr())
	}
	if a == netip.MustParseAddr("fd00:ec2::254") || a == netip.MustParseAddr("100.100.100.200") {
		return fmt.Errorf("a CRL is never fetched from %s (a cloud metadata service)", ap.Addr())
	}
	return nil
}
