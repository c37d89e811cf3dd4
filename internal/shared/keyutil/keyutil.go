// Package keyutil holds the small key helpers every part of ward shares: the
// two key-ID variants (a CA key's, as bundles, taints and deny-lists name it,
// and a checkpoint signing key's, as audit checkpoints name it) and PEM
// private-key parsing. Standard library only.
package keyutil

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// CAKeyID is the ID of a CA key: the first 160 bits of the SHA-256 of its
// PKIX (DER) encoding, in hex (40 digits). `ward ca show` lists it, `ward ca
// taint` takes it, the policy deny-list's tainted_keys hold it; it is also the
// subject key identifier of ward's CA certificates and the JWT "kid"
// (RFC 7093 method 1 style).
func CAKeyID(pub crypto.PublicKey) (string, error) {
	sum, err := pkixSum(pub)
	if err != nil {
		return "", fmt.Errorf("CA key ID: %w", err)
	}
	return hex.EncodeToString(sum[:20]), nil
}

// CheckpointKeyID is the ID of an audit checkpoint signing key: the whole
// SHA-256 of its PKIX (DER) encoding, in hex (64 digits).
func CheckpointKeyID(pub crypto.PublicKey) (string, error) {
	sum, err := pkixSum(pub)
	if err != nil {
		return "", fmt.Errorf("encoding checkpoint public key: %w", err)
	}
	return hex.EncodeToString(sum[:]), nil
}

func pkixSum(pub crypto.PublicKey) ([sha256.Size]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(der), nil
}

// ParsePrivateKeyPEM returns the first private key in b (PKCS#8 "PRIVATE
// KEY", SEC 1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY"); other PEM blocks
// (certificates) are skipped. The error never contains key material.
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("no PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %v", blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T keys cannot sign", k)
		}
		return s, nil
	}
}
