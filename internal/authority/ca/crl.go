package ca

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"
)

// crlReasonCACompromise is the RFC 5280 reason code for a compromised CA.
const crlReasonCACompromise = 2

// buildCRLs returns, for each published root with tainted intermediates, a
// DER CRL signed by that root that revokes them. Tainting a root removes it
// from the bundle instead; CRLs are for intermediates, which verifiers would
// otherwise keep trusting through their still-published root.
func buildCRLs(s *persisted, number int64) ([][]byte, error) {
	var out [][]byte
	for _, root := range s.Keys {
		if root.Kind != KindRoot || !root.inBundle() {
			continue
		}
		tmpl := &x509.RevocationList{Number: big.NewInt(number)}
		for _, k := range s.Keys {
			if k.Kind != KindIntermediate || k.Parent != root.ID || k.State != StateTainted {
				continue
			}
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
				SerialNumber: k.cert.SerialNumber, RevocationTime: k.TaintedAt, ReasonCode: crlReasonCACompromise,
			})
			if k.TaintedAt.After(tmpl.ThisUpdate) {
				tmpl.ThisUpdate = k.TaintedAt
			}
			if k.NotAfter.After(tmpl.NextUpdate) {
				tmpl.NextUpdate = k.NotAfter
			}
		}
		if len(tmpl.RevokedCertificateEntries) == 0 {
			continue
		}
		// The CRL stays authoritative until the last revoked intermediate
		// has expired; a new taint produces a new CRL with a higher number.
		if !tmpl.NextUpdate.After(tmpl.ThisUpdate) {
			tmpl.NextUpdate = tmpl.ThisUpdate.Add(time.Second)
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, root.cert, root.signer)
		if err != nil {
			return nil, fmt.Errorf("sign CRL with root %s: %w", root.ID, err)
		}
		out = append(out, der)
	}
	return out, nil
}

// CRLs returns DER certificate revocation lists, one per published root that
// has tainted intermediates, each revoking them (reason cACompromise). The
// Workload API carries them in its crl fields; verifiers that honour CRLs
// (and ward's proxies) then reject chains through a tainted intermediate
// while its root stays trusted. The CRL number is the state revision.
func (c *CA) CRLs() [][]byte {
	v := c.view.Load()
	return append([][]byte(nil), v.crls...)
}
