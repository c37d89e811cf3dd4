package agent

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// auditCheckpointFile is the agent's memory of the authority's audit log,
// in its data dir.
const auditCheckpointFile = "audit-checkpoint.json"

// auditMemory makes every agent a witness of the authority's audit log:
// each Sync sends the size of the newest checkpoint the agent verified and
// gets the authority's signed head plus an RFC 6962 consistency proof from
// that size. The agent moves its checkpoint forward only when the
// signature verifies and the proof shows the new head extends the old one.
// A head that is smaller, a different root at the same size, a proof that
// does not verify, a bad signature or a different signing key means the
// authority's log was truncated, rolled back, forked or replaced: the agent
// logs it at error level, counts it (ward_agent_audit_log_rollback_total,
// gauge ward_agent_audit_log_rollback = 1 until a head verifies again) and
// keeps its old checkpoint; it never moves backwards.
//
// Key trust: the audit public key arrives in the Sync response over the
// Node API's mTLS channel, which is authenticated as spiffe://TD/ward/server
// against the trust bundle, and is pinned on first sight (trust on first
// use) in the same file: a later Sync signed by another key is flagged, not
// followed. If the authority was deliberately re-initialised, delete
// <data_dir>/audit-checkpoint.json.
type auditMemory struct {
	path string
	log  *slog.Logger

	mu     sync.Mutex
	cp     *checkpoint.Checkpoint
	pub    crypto.PublicKey
	pubPEM []byte
	// readOnly: the file exists but could not be read; it is never
	// overwritten (an operator must look at it).
	readOnly bool

	rollbacks atomic.Uint64
	alarm     atomic.Bool
	size      atomic.Uint64
}

// auditMemoryFile is the on-disk form.
type auditMemoryFile struct {
	Checkpoint   json.RawMessage `json:"checkpoint"` // `ward audit checkpoint` format
	PublicKeyPEM string          `json:"public_key_pem"`
}

// openAuditMemory loads the remembered checkpoint from dataDir, if any.
// A file that does not parse or verify is reported and left alone; the
// agent then checks heads but does not remember them.
func openAuditMemory(dataDir string, log *slog.Logger) *auditMemory {
	m := &auditMemory{path: filepath.Join(dataDir, auditCheckpointFile), log: log}
	if err := m.load(); err != nil {
		m.readOnly = true
		log.Error("cannot read the remembered audit checkpoint; it is kept as is and no newer one is remembered until it is fixed or deleted",
			"path", m.path, "error", err)
	}
	return m
}

func (m *auditMemory) load() error {
	b, err := os.ReadFile(m.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var f auditMemoryFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s does not parse: %w", m.path, err)
	}
	cp, err := checkpoint.Parse(f.Checkpoint)
	if err != nil {
		return err
	}
	pub, err := checkpoint.ParsePublicKeyPEM([]byte(f.PublicKeyPEM))
	if err != nil {
		return err
	}
	if err := checkpoint.Verify(cp, pub); err != nil {
		return fmt.Errorf("%s: %w", m.path, err)
	}
	m.cp, m.pub, m.pubPEM = &cp, pub, []byte(f.PublicKeyPEM)
	m.size.Store(cp.Size)
	return nil
}

// knownSize is the size to send in SyncRequest.audit_tree_size.
func (m *auditMemory) knownSize() uint64 { return m.size.Load() }

// observe checks the audit checkpoint of a Sync response against the
// remembered one and moves forward only when it provably extends it.
func (m *auditMemory) observe(resp *wardv1.SyncResponse) {
	if len(resp.GetAuditCheckpoint()) == 0 {
		return // an authority without an audit source: nothing to check
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cp, err := checkpoint.Parse(resp.GetAuditCheckpoint())
	if err != nil {
		m.rollback("unreadable", nil, err)
		return
	}
	pemKey := resp.GetAuditPublicKeyPem()
	pub, err := checkpoint.ParsePublicKeyPEM(pemKey)
	if err != nil {
		m.rollback("unreadable key", &cp, err)
		return
	}
	if m.pub != nil && !bytes.Equal(pemKey, m.pubPEM) {
		m.rollback("signing key changed", &cp, errors.New("the checkpoint is signed by another key than the one pinned at first sight"))
		return
	}
	if err := checkpoint.Verify(cp, pub); err != nil {
		m.rollback("bad signature", &cp, err)
		return
	}
	if old := m.cp; old != nil {
		switch {
		case cp.Origin != old.Origin:
			m.rollback("other log", &cp, fmt.Errorf("the checkpoint is for log %q, the remembered one for %q", cp.Origin, old.Origin))
			return
		case cp.Size < old.Size:
			m.rollback("went backwards", &cp, fmt.Errorf("the log has %d events, %d were verified earlier", cp.Size, old.Size))
			return
		case cp.Size == old.Size:
			if !bytes.Equal(cp.RootHash, old.RootHash) {
				m.rollback("forked", &cp, fmt.Errorf("same size %d, different root", cp.Size))
				return
			}
			m.alarm.Store(false)
			return
		default:
			if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, cp.Size, resp.GetAuditConsistencyProof(), old.RootHash, cp.RootHash); err != nil {
				m.rollback("inconsistent", &cp, fmt.Errorf("the consistency proof from size %d does not verify: %w", old.Size, err))
				return
			}
		}
	}
	m.alarm.Store(false)
	if m.readOnly {
		return
	}
	if err := m.save(cp, pemKey); err != nil {
		m.log.Error("could not remember the audit checkpoint; checking against the previous one", "path", m.path, "error", err)
		return
	}
	m.cp, m.pub, m.pubPEM = &cp, pub, append([]byte(nil), pemKey...)
	m.size.Store(cp.Size)
}

// rollback reports a head that does not extend the remembered checkpoint.
func (m *auditMemory) rollback(why string, head *checkpoint.Checkpoint, err error) {
	m.rollbacks.Add(1)
	m.alarm.Store(true)
	args := []any{"reason", why, "error", err, "path", m.path}
	if old := m.cp; old != nil {
		args = append(args, "remembered_size", old.Size, "remembered_root", hex.EncodeToString(old.RootHash))
	}
	if head != nil {
		args = append(args, "authority_size", head.Size, "authority_root", hex.EncodeToString(head.RootHash))
	}
	m.log.Error("AUDIT LOG ROLLBACK: the authority's audit log does not extend the checkpoint this agent verified earlier; "+
		"keeping the remembered checkpoint. Treat it as an incident: the log was truncated, rolled back or replaced", args...)
}

// save writes the checkpoint atomically (temporary file, fsync, rename,
// directory fsync), mode 0600.
func (m *auditMemory) save(cp checkpoint.Checkpoint, pemKey []byte) error {
	cj, err := checkpoint.Encode(cp)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(auditMemoryFile{Checkpoint: cj, PublicKeyPEM: string(pemKey)}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(m.path, b, 0o600)
}
