// Package backup writes, verifies and restores backups of an authority's
// whole storage. A backup is the raw store as stored (values still
// encrypted by the barrier, the keyring still wrapped under the root key,
// the seal configuration), taken at one point (bbolt: one read
// transaction; etcd: one revision), plus the RFC 6962 leaf hashes of the
// audit events it holds, behind a manifest the authority signs with its
// audit checkpoint key. Nothing in a backup is plaintext key material: a
// restored authority needs the original unseal shares (or its auto seal).
//
// File layout (all integers big endian):
//
//	magic "WARDBACKUP1\n" (12 bytes)
//	u32 manifest length | manifest (JSON, Manifest)
//	u16 signature length | signature (ECDSA P-256, ASN.1, over
//	    SHA-256("ward backup manifest v1\n" || magic || manifest))
//	payload (exactly Manifest.PayloadSize bytes, SHA-256 Manifest.PayloadSHA256):
//	  Manifest.Entries times: u16 key length | key | u32 value length | value
//	      (raw store entries, sorted by key, each key once)
//	  Manifest.Audit.Entries times: 32-byte RFC 6962 leaf hash of audit event i
//
// The parser treats the file as untrusted input: every length is bounded
// before anything is allocated, and verification needs no key but the
// public key in the manifest (compared with a trusted one when given).
package backup

import (
	"crypto/sha256"
	"errors"
	"time"

	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// Magic starts every backup file.
const Magic = "WARDBACKUP1\n"

// Format is the manifest format version this build writes and reads.
const Format = 1

// Limits of the parser.
const (
	MaxManifest  = 1 << 20  // bytes of manifest JSON
	MaxSignature = 256      // bytes of signature
	MaxKey       = 4096     // bytes of one storage key
	MaxValue     = 64 << 20 // bytes of one stored value
	MaxEntries   = 1 << 30  // entries in one backup
)

// sigContext separates manifest signatures from every other signature the
// audit key makes (checkpoints, cosignatures).
const sigContext = "ward backup manifest v1\n"

// Manifest describes a backup; the authority signs it.
type Manifest struct {
	Format      int       `json:"format"`
	Created     time.Time `json:"created"`
	WardVersion string    `json:"ward_version"`
	TrustDomain string    `json:"trust_domain"`
	// Backend is the store the backup was taken from ("bbolt", "etcd").
	Backend string `json:"backend"`
	// StoreRevision is the highest store revision among the entries.
	StoreRevision int64 `json:"store_revision"`
	// Entries counts the raw store entries; Reserved those under "core/"
	// (keyring, seal configuration, barrier rotation state).
	Entries  int64 `json:"entries"`
	Reserved int64 `json:"reserved"`
	// Terms counts the barrier-encrypted values per keyring term.
	Terms map[string]int64 `json:"barrier_terms"`
	Seal  SealInfo         `json:"seal"`
	Audit AuditInfo        `json:"audit"`
	// PublicKey is the audit checkpoint key (PKIX PEM) that signed the
	// manifest and the checkpoint; KeyID is its checkpoint key id.
	PublicKey     string `json:"public_key"`
	KeyID         string `json:"key_id"`
	PayloadSize   int64  `json:"payload_size"`
	PayloadSHA256 string `json:"payload_sha256"`
}

// SealInfo repeats the (non-secret) seal configuration: what a restore
// needs to unseal.
type SealInfo struct {
	Type      string `json:"type"`
	Shares    int    `json:"shares,omitempty"`
	Threshold int    `json:"threshold,omitempty"`
}

// AuditInfo names the audit log state the backup holds.
type AuditInfo struct {
	// Entries is the number of audit events stored (audit/e/0 ..
	// audit/e/Entries-1, all in the backup).
	Entries uint64 `json:"entries"`
	// Checkpoint is the newest signed checkpoint of the log in the
	// backup; Checkpoint.Size <= Entries.
	Checkpoint checkpoint.Checkpoint `json:"checkpoint"`
}

// ErrRefused wraps every reason a backup is refused.
var ErrRefused = errors.New("backup refused")

func sigDigest(manifest []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(sigContext))
	h.Write([]byte(Magic))
	h.Write(manifest)
	var d [32]byte
	h.Sum(d[:0])
	return d
}
