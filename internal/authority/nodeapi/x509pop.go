package nodeapi

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
)

const maxChain = 8

// X509PopAgentID is the agent ID an x509pop node gets:
// spiffe://TD/ward/agent/x509pop/<hex SHA-256 of the leaf certificate>.
func X509PopAgentID(td spiffeid.TrustDomain, leaf *x509.Certificate) spiffeid.ID {
	sum := sha256.Sum256(leaf.Raw)
	return spiffeid.RequireFromPath(td, registry.AgentIDPrefix+registry.AttestX509Pop+"/"+hex.EncodeToString(sum[:]))
}

// verifyX509Pop parses the node's chain (DER, leaf first) and verifies it
// against roots at now. It returns the leaf and the selectors describing it.
func verifyX509Pop(chain [][]byte, roots *x509.CertPool, now time.Time) (*x509.Certificate, []attest.Selector, error) {
	if len(chain) == 0 || len(chain) > maxChain {
		return nil, nil, fmt.Errorf("x509pop: send the node certificate chain (1-%d certificates, leaf first); got %d", maxChain, len(chain))
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("x509pop: certificate %d of the chain does not parse: %v", i, err)
		}
		certs[i] = c
	}
	leaf := certs[0]
	if leaf.IsCA {
		return nil, nil, errors.New("x509pop: the leaf certificate is a CA; use the node's own certificate")
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, nil, errors.New("x509pop: the node certificate's key usage lacks digitalSignature")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop: the node certificate (subject %q) does not chain to identity.x509pop_ca_bundle: %v", leaf.Subject.String(), err)
	}
	sum := sha256.Sum256(leaf.Raw)
	sels := []attest.Selector{{Type: "x509pop", Value: "leaf:sha256:" + hex.EncodeToString(sum[:])},
		{Type: "x509pop", Value: "serialnumber:" + leaf.SerialNumber.Text(16)}}
	if cn := leaf.Subject.CommonName; cn != "" && printableASCII(cn) {
		sels = append(sels, attest.Selector{Type: "x509pop", Value: "subject:cn:" + cn})
	}
	if len(chains) > 0 {
		root := chains[0][len(chains[0])-1]
		rs := sha256.Sum256(root.Raw)
		sels = append(sels, attest.Selector{Type: "x509pop", Value: "ca:sha256:" + hex.EncodeToString(rs[:])})
	}
	return leaf, attest.Normalize(sels), nil
}

func printableASCII(s string) bool {
	return len(s) <= 256 && strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r > 0x7e }) < 0
}
