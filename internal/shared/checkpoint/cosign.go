package checkpoint

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/keyutil"
)

// Cosignature is a witness's statement that it verified Checkpoint (its
// signature, and that it extends every checkpoint of the same log the
// witness saw before) at Time. Federated authorities witness each other's
// audit logs (docs/federation.md, "Audit witnesses"): the witness signs with
// its own audit checkpoint key, over a body that can never be mistaken for
// a checkpoint body (CosignedBody):
//
//	ward-witness-cosignature/v1\n
//	witness <witness name>\n
//	time <RFC 3339 UTC>\n
//	<the checkpoint's SignedBody>
//
// KeyID is the hex SHA-256 of the witness's PKIX public key.
type Cosignature struct {
	Witness    string     `json:"witness"`
	Checkpoint Checkpoint `json:"checkpoint"`
	Time       time.Time  `json:"time"`
	KeyID      string     `json:"key_id"`
	Signature  []byte     `json:"signature"`
}

const cosignHeader = "ward-witness-cosignature/v1\n"

// CosignedBody returns the bytes the witness's signature covers: seven
// lines, where a checkpoint body has four, with a fixed first line.
func (c *Cosignature) CosignedBody() []byte {
	var b strings.Builder
	b.WriteString(cosignHeader)
	b.WriteString("witness " + c.Witness + "\n")
	b.WriteString("time " + c.Time.UTC().Format(time.RFC3339Nano) + "\n")
	b.Write(c.Checkpoint.SignedBody())
	return []byte(b.String())
}

// Cosign signs cp as witness (a name such as the witness's trust domain)
// at time t with an ECDSA P-256 signer. It does not check cp: the caller
// verified it.
func Cosign(signer crypto.Signer, witness string, cp Checkpoint, t time.Time) (Cosignature, error) {
	if err := CheckOrigin(witness); err != nil {
		return Cosignature{}, fmt.Errorf("witness name: %w", err)
	}
	if err := cp.Check(); err != nil {
		return Cosignature{}, err
	}
	pub, err := P256Key(signer.Public())
	if err != nil {
		return Cosignature{}, err
	}
	id, err := keyutil.CheckpointKeyID(pub)
	if err != nil {
		return Cosignature{}, err
	}
	cs := Cosignature{Witness: witness, Checkpoint: cp, Time: t.UTC().Round(0), KeyID: id}
	digest := sha256.Sum256(cs.CosignedBody())
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return Cosignature{}, fmt.Errorf("cosigning the checkpoint of %s at size %d: %w", cp.Origin, cp.Size, err)
	}
	cs.Signature = sig
	return cs, nil
}

// VerifyCosignature checks that cs is well formed and signed by the
// witness's key pub. It does not check the cosigned checkpoint's own
// signature: verify it with its log's key.
func VerifyCosignature(cs Cosignature, pub crypto.PublicKey) error {
	if err := CheckOrigin(cs.Witness); err != nil {
		return fmt.Errorf("cosignature: witness name: %w", err)
	}
	if err := cs.Checkpoint.Check(); err != nil {
		return fmt.Errorf("cosignature: %w", err)
	}
	if cs.Time.IsZero() {
		return errors.New("cosignature has no time")
	}
	if len(cs.Signature) == 0 || len(cs.Signature) > maxSignature {
		return fmt.Errorf("cosignature signature is %d bytes: need 1..%d", len(cs.Signature), maxSignature)
	}
	k, err := P256Key(pub)
	if err != nil {
		return err
	}
	id, err := keyutil.CheckpointKeyID(k)
	if err != nil {
		return err
	}
	if cs.KeyID != id {
		return fmt.Errorf("cosignature of %s by %s was made with key %s, not with the witness's key %s", cs.Checkpoint.Origin, cs.Witness, short(cs.KeyID), short(id))
	}
	digest := sha256.Sum256(cs.CosignedBody())
	if !ecdsa.VerifyASN1(k, digest[:], cs.Signature) {
		return fmt.Errorf("cosignature of %s at size %d by %s does not verify with key %s (altered or forged)", cs.Checkpoint.Origin, cs.Checkpoint.Size, cs.Witness, short(id))
	}
	return nil
}
