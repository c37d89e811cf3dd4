package backup

import (
	"encoding/json"
	"time"
)

// RecordKey holds the restore record: written by Restore in the batch of
// the barrier keyring (so only a complete restore has one), read and
// deleted by the authority at its first unseal, which audits it (the
// audit log lives behind the barrier: a restore cannot write to it). In
// the raw store under the reserved prefix, like the seal configuration:
// it holds no secret.
const RecordKey = "core/restore"

// Policy lint choices of a restore (Record.PolicyLint).
const (
	// LintStricter: the restored authority enforces at least strict (the
	// default). A restore writes into an empty target and cannot read the
	// mode of the cluster it replaces (its values are encrypted under keys
	// the restore does not hold), so it takes the stricter one: a backup
	// taken in warn mode never lowers a cluster that had turned strict.
	// Lowering it again is the audited `ward policy lint-mode warn`.
	LintStricter = "stricter"
	// LintFromBackup: the backup's stored mode stands, warn included
	// (`ward operator backup restore --keep-backup-lint-mode`).
	LintFromBackup = "backup"
)

// Record is what a restore leaves for the restored authority to audit.
type Record struct {
	Restored      time.Time `json:"restored"`
	BackupCreated time.Time `json:"backup_created"`
	TrustDomain   string    `json:"trust_domain"`
	PayloadSHA256 string    `json:"payload_sha256"`
	KeyID         string    `json:"key_id"`
	// PolicyLint is LintStricter or LintFromBackup.
	PolicyLint string `json:"policy_lint"`
}

// ParseRecord reads a stored restore record. An unreadable one (storage
// is writable by whoever holds the disk) reads as LintStricter: fail
// closed.
func ParseRecord(b []byte) (Record, bool) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil || (r.PolicyLint != LintStricter && r.PolicyLint != LintFromBackup) {
		return Record{PolicyLint: LintStricter}, false
	}
	return r, true
}
