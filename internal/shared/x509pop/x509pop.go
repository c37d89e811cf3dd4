// Package x509pop is the x509pop node-attestation challenge both sides speak:
// the authority sends a random nonce, the node signs it with the private key
// of its certificate, and the authority verifies the signature with the
// certificate's public key. A context string keeps these signatures apart
// from any other use of the node key.
package x509pop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
)

// challengeContext separates x509pop challenge signatures from any other use
// of the node key.
const challengeContext = "ward x509pop challenge v1\x00"

// NonceSize is the size of an x509pop challenge.
const NonceSize = 32

// message is what the node signs: the context string, then the
// nonce.
func message(nonce []byte) []byte {
	return append([]byte(challengeContext), nonce...)
}

// Sign answers an x509pop challenge with the node key: an
// Ed25519 key signs the message ("ward x509pop challenge v1\x00" ||
// nonce) directly; ECDSA (ASN.1) and RSA (PKCS#1 v1.5 or PSS) keys sign its
// SHA-256 digest. Agents call this; the authority checks it with
// Verify.
func Sign(key crypto.Signer, nonce []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("x509pop challenge has %d bytes, want %d", len(nonce), NonceSize)
	}
	msg := message(nonce)
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	sum := sha256.Sum256(msg)
	return key.Sign(rand.Reader, sum[:], crypto.SHA256)
}

// Verify checks a signature made by Sign.
func Verify(pub crypto.PublicKey, nonce, sig []byte) error {
	msg := message(nonce)
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
