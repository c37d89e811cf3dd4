package nodeapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/attest"
	"github.com/wardproject/ward/internal/registry"
)

// x509popContext separates x509pop challenge signatures from any other use
// of the node key.
const x509popContext = "ward x509pop challenge v1\x00"

// NonceSize is the size of an x509pop challenge.
const NonceSize = 32

const maxChain = 8

// x509popMessage is what the node signs: the context string, then the
// nonce.
func x509popMessage(nonce []byte) []byte {
	return append([]byte(x509popContext), nonce...)
}

// SignX509PopChallenge answers an x509pop challenge with the node key: an
// Ed25519 key signs the message ("ward x509pop challenge v1\x00" ||
// nonce) directly; ECDSA (ASN.1) and RSA (PKCS#1 v1.5 or PSS) keys sign its
// SHA-256 digest. Agents call this; the authority checks it with
// VerifyX509PopChallenge.
func SignX509PopChallenge(key crypto.Signer, nonce []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("x509pop challenge has %d bytes, want %d", len(nonce), NonceSize)
	}
	msg := x509popMessage(nonce)
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	sum := sha256.Sum256(msg)
	return key.Sign(rand.Reader, sum[:], crypto.SHA256)
}

// VerifyX509PopChallenge checks a signature made by SignX509PopChallenge.
func VerifyX509PopChallenge(pub crypto.PublicKey, nonce, sig []byte) error {
	msg := x509popMessage(nonce)
	sum := sha256.Sum256(msg)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if ecdsa.VerifyASN1(k, sum[:], sig) {
			return nil
		}
	case *rsa.PublicKey:
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig) == nil ||
			rsa.VerifyPSS(k, crypto.SHA256, sum[:], sig, nil) == nil {
			return nil
		}
	case ed25519.PublicKey:
		if ed25519.Verify(k, msg, sig) {
			return nil
		}
	default:
		return fmt.Errorf("node key type %T is not supported for x509pop; use ECDSA, RSA or Ed25519", pub)
	}
	return errors.New("the challenge signature does not verify with the node certificate's key")
}

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
