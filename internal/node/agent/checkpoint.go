package agent

import (
	"encoding/hex"
	"errors"
	"log/slog"
	"path/filepath"
	"sync/atomic"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
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
// The checking and remembering is checkpoint.Witness (the same as `ward
// audit verify`'s), over a checkpoint.FileMemory in the data dir.
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
	path    string
	log     *slog.Logger
	mem     *checkpoint.FileMemory // nil if readOnly
	witness *checkpoint.Witness
	// readOnly: the file exists but could not be read; it is never
	// overwritten (an operator must look at it).
	readOnly bool

	rollbacks atomic.Uint64
	alarm     atomic.Bool
	size      atomic.Uint64
}

// openAuditMemory loads the remembered checkpoint from dataDir, if any.
// A file that does not parse or verify is reported and left alone; the
// agent then checks heads but does not remember them.
func openAuditMemory(dataDir string, log *slog.Logger) *auditMemory {
	m := &auditMemory{path: filepath.Join(dataDir, auditCheckpointFile), log: log}
	mem, err := checkpoint.OpenFileMemory(m.path)
	if err != nil {
		m.readOnly = true
		log.Error("cannot read the remembered audit checkpoint; it is kept as is and no newer one is remembered until it is fixed or deleted",
			"path", m.path, "error", err)
		return m
	}
	m.mem, m.witness = mem, checkpoint.NewWitness(mem)
	if cp := mem.Latest(); cp != nil {
		m.size.Store(cp.Size)
	}
	return m
}

// latest is the remembered checkpoint (nil if none, or the file is unreadable).
func (m *auditMemory) latest() *checkpoint.Checkpoint {
	if m.mem == nil {
		return nil
	}
	return m.mem.Latest()
}

// knownSize is the size to send in SyncRequest.audit_tree_size.
func (m *auditMemory) knownSize() uint64 { return m.size.Load() }

// observe checks the audit checkpoint of a Sync response against the
// remembered one and moves forward only when it provably extends it.
func (m *auditMemory) observe(resp *wardv1.SyncResponse) {
	if len(resp.GetAuditCheckpoint()) == 0 {
		return // an authority without an audit source: nothing to check
	}
	cp, err := checkpoint.Parse(resp.GetAuditCheckpoint())
	if err != nil {
		m.rollback("unreadable", nil, err)
		return
	}
	pub, err := checkpoint.ParsePublicKeyPEM(resp.GetAuditPublicKeyPem())
	if err != nil {
		m.rollback("unreadable key", &cp, err)
		return
	}
	if m.readOnly {
		err = checkpoint.Verify(cp, pub) // nothing remembered to compare with, nothing written
	} else {
		err = m.witness.Advance(cp, pub, resp.GetAuditConsistencyProof())
	}
	var rb *checkpoint.RollbackError
	var kc *checkpoint.KeyChangedError
	switch {
	case errors.As(err, &rb):
		m.rollback(rb.Reason(), &cp, err)
	case errors.As(err, &kc):
		m.rollback("signing key changed", &cp, errors.New("the checkpoint is signed by another key than the one pinned at first sight"))
	case err != nil && !m.readOnly && checkpoint.Verify(cp, pub) == nil:
		m.log.Error("could not remember the audit checkpoint; checking against the previous one", "path", m.path, "error", err)
	case err != nil:
		m.rollback("bad signature", &cp, err)
	default:
		m.alarm.Store(false)
		if latest := m.latest(); latest != nil {
			m.size.Store(latest.Size)
		}
	}
}

// rollback reports a head that does not extend the remembered checkpoint.
func (m *auditMemory) rollback(why string, head *checkpoint.Checkpoint, err error) {
	m.rollbacks.Add(1)
	m.alarm.Store(true)
	args := []any{"reason", why, "error", err, "path", m.path}
	if old := m.latest(); old != nil {
		args = append(args, "remembered_size", old.Size, "remembered_root", hex.EncodeToString(old.RootHash))
	}
	if head != nil {
		args = append(args, "authority_size", head.Size, "authority_root", hex.EncodeToString(head.RootHash))
	}
	m.log.Error("AUDIT LOG ROLLBACK: the authority's audit log does not extend the checkpoint this agent verified earlier; "+
		"keeping the remembered checkpoint. Treat it as an incident: the log was truncated, rolled back or replaced", args...)
}
