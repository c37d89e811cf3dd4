// Package checkpoint is the format of the audit log's signed checkpoints
// (tree size, RFC 6962 root hash, time, ECDSA P-256 signature): signed by
// the authority, checked by the CLI and by every agent, which keep the
// newest one they have verified (Witness, over a DirMemory for the CLI and a
// FileMemory for an agent) to catch a log that goes backwards.
package checkpoint

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wardproject/ward/internal/shared/keyutil"
)

// Checkpoint is a signed statement that the log held Size events whose
// RFC 6962 Merkle root is RootHash. The signature covers SignedBody, a text
// body in the spirit of C2SP tlog-checkpoint:
//
//	<origin>\n<size>\n<base64 root>\n<time, RFC 3339 UTC>\n
//
// signed with ECDSA P-256 over SHA-256 (ASN.1 signature). KeyID is the hex
// SHA-256 of the signer's PKIX public key.
type Checkpoint struct {
	Origin    string    `json:"origin"`
	Size      uint64    `json:"size"`
	RootHash  []byte    `json:"root_hash"`
	Time      time.Time `json:"time"`
	KeyID     string    `json:"key_id"`
	Signature []byte    `json:"signature"`
}

// Limits on checkpoint fields, enforced when signing and parsing.
const (
	maxOrigin    = 256
	maxSignature = 256
	MaxFileSize  = 16 << 10 // the largest checkpoint file Parse accepts
)

// SignedBody returns the bytes the signature covers.
func (c *Checkpoint) SignedBody() []byte {
	var b strings.Builder
	b.WriteString(c.Origin)
	b.WriteByte('\n')
	b.WriteString(strconv.FormatUint(c.Size, 10))
	b.WriteByte('\n')
	b.WriteString(base64.StdEncoding.EncodeToString(c.RootHash))
	b.WriteByte('\n')
	b.WriteString(c.Time.UTC().Format(time.RFC3339Nano))
	b.WriteByte('\n')
	return []byte(b.String())
}

// checkOrigin rejects origins that would make the signed body ambiguous.
func CheckOrigin(origin string) error {
	switch {
	case origin == "":
		return errors.New("checkpoint origin is empty: name the log (e.g. \"ward/<trust domain>\")")
	case len(origin) > maxOrigin:
		return fmt.Errorf("checkpoint origin is %d bytes: at most %d", len(origin), maxOrigin)
	case !utf8.ValidString(origin):
		return errors.New("checkpoint origin is not valid UTF-8")
	}
	for _, r := range origin {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("checkpoint origin %q contains a control character", origin)
		}
	}
	return nil
}

// p256Key returns pub as a P-256 ECDSA key or says why it is not one.
func P256Key(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k == nil {
		return nil, fmt.Errorf("checkpoint key is %T: need an ECDSA P-256 public key", pub)
	}
	if k.Curve == nil || k.Curve != elliptic.P256() {
		return nil, errors.New("checkpoint key is not on curve P-256: need an ECDSA P-256 public key")
	}
	return k, nil
}

// SignCheckpoint signs a checkpoint for a tree of size with root, at time t,
// with an ECDSA P-256 signer.
func Sign(signer crypto.Signer, origin string, size uint64, root []byte, t time.Time) (Checkpoint, error) {
	pub, err := P256Key(signer.Public())
	if err != nil {
		return Checkpoint{}, err
	}
	id, err := keyutil.CheckpointKeyID(pub)
	if err != nil {
		return Checkpoint{}, err
	}
	return SignAs(signer, id, origin, size, root, t)
}

// SignAs is Sign with the key ID of signer's public key already computed
// (keyutil.CheckpointKeyID of signer.Public(), which Sign derives on every
// call): the audit log signs one checkpoint per group commit with one key.
func SignAs(signer crypto.Signer, keyID, origin string, size uint64, root []byte, t time.Time) (Checkpoint, error) {
	if err := CheckOrigin(origin); err != nil {
		return Checkpoint{}, err
	}
	if len(root) != sha256.Size {
		return Checkpoint{}, fmt.Errorf("checkpoint root hash is %d bytes: need %d", len(root), sha256.Size)
	}
	cp := Checkpoint{Origin: origin, Size: size, RootHash: bytes.Clone(root), Time: t.UTC().Round(0), KeyID: keyID}
	digest := sha256.Sum256(cp.SignedBody())
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("signing audit checkpoint at size %d: %w", size, err)
	}
	cp.Signature = sig
	return cp, nil
}

// VerifyCheckpoint checks that cp is well formed and signed by pub.
func Verify(cp Checkpoint, pub crypto.PublicKey) error {
	if err := cp.Check(); err != nil {
		return err
	}
	k, err := P256Key(pub)
	if err != nil {
		return err
	}
	id, err := keyutil.CheckpointKeyID(k)
	if err != nil {
		return err
	}
	if cp.KeyID != id {
		return fmt.Errorf("checkpoint at size %d was signed by key %s, not by the given key %s: check which key you trust", cp.Size, short(cp.KeyID), short(id))
	}
	digest := sha256.Sum256(cp.SignedBody())
	if !ecdsa.VerifyASN1(k, digest[:], cp.Signature) {
		return fmt.Errorf("checkpoint at size %d: signature does not verify with key %s (checkpoint altered or forged)", cp.Size, short(id))
	}
	return nil
}

func short(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// check validates field shapes (not the signature).
func (c *Checkpoint) Check() error {
	if err := CheckOrigin(c.Origin); err != nil {
		return err
	}
	if len(c.RootHash) != sha256.Size {
		return fmt.Errorf("checkpoint root_hash is %d bytes: need %d", len(c.RootHash), sha256.Size)
	}
	if len(c.KeyID) != 2*sha256.Size {
		return fmt.Errorf("checkpoint key_id is %d characters: need %d hex digits", len(c.KeyID), 2*sha256.Size)
	}
	if _, err := hex.DecodeString(c.KeyID); err != nil || strings.ToLower(c.KeyID) != c.KeyID {
		return errors.New("checkpoint key_id is not lower-case hex")
	}
	if len(c.Signature) == 0 || len(c.Signature) > maxSignature {
		return fmt.Errorf("checkpoint signature is %d bytes: need 1..%d", len(c.Signature), maxSignature)
	}
	if c.Time.IsZero() {
		return errors.New("checkpoint has no time")
	}
	if y := c.Time.UTC().Year(); y < 1 || y > 9999 {
		return errors.New("checkpoint time is outside years 1..9999")
	}
	return nil
}

// EncodeCheckpoint returns cp as indented JSON with a trailing newline, the
// format of `ward audit checkpoint > cp.json`.
func Encode(cp Checkpoint) ([]byte, error) {
	cp.Time = cp.Time.UTC()
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding checkpoint: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseCheckpoint decodes a checkpoint file (untrusted input). It rejects
// unknown fields, trailing data and malformed values; it does not check
// the signature: call VerifyCheckpoint.
func Parse(data []byte) (Checkpoint, error) {
	if len(data) > MaxFileSize {
		return Checkpoint{}, fmt.Errorf("checkpoint file is %d bytes: at most %d", len(data), MaxFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cp Checkpoint
	if err := dec.Decode(&cp); err != nil {
		return Checkpoint{}, fmt.Errorf("parsing checkpoint: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Checkpoint{}, errors.New("parsing checkpoint: unexpected data after the JSON object")
	}
	if err := cp.Check(); err != nil {
		return Checkpoint{}, fmt.Errorf("parsing checkpoint: %w", err)
	}
	cp.Time = cp.Time.UTC()
	return cp, nil
}

// MarshalPublicKeyPEM encodes a checkpoint public key as a PKIX PEM block.
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding checkpoint public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKeyPEM decodes a PKIX PEM checkpoint key (untrusted input) and
// requires ECDSA P-256.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	blk, rest := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("checkpoint public key: no PEM \"PUBLIC KEY\" block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("checkpoint public key: unexpected data after the PEM block")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("checkpoint public key: %w", err)
	}
	k, err := P256Key(pub)
	if err != nil {
		return nil, err
	}
	return k, nil
}
