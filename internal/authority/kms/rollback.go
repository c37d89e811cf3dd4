package kms

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Mark is what the audit log last recorded about a key record.
type Mark struct {
	Revision  uint64
	Digest    string
	Seq       uint64   // the audit event that recorded it
	Destroyed []uint32 // versions the log recorded as destroyed
}

// Witness tells the KMS the newest record revision the audit log holds for
// a key (ok false: none recorded). An error means it cannot tell, and the
// key is not used (fail closed).
type Witness interface {
	Latest(ctx context.Context, name string) (m Mark, ok bool, err error)
}

// A SyncedWitness can also answer for many keys from one reading of the
// audit log: Synced reads it once and returns a Witness that answers from
// that reading (or a later one) without reading the log again. A listing
// checks every key it read through it.
type SyncedWitness interface {
	Witness
	Synced(ctx context.Context) (Witness, error)
}

// WithWitness makes the KMS check every key record it loads against w.
func WithWitness(w Witness) Option { return func(m *Manager) { m.witness = w } }

// RollbacksDetected counts key records refused because they were older
// than (or differed from) what the audit log recorded.
func (m *Manager) RollbacksDetected() uint64 { return m.rollbacks.Load() }

// Audit event fields that tie a key-changing event to the record it wrote
// (the audit package's RevisionIndex reads them back).
const (
	fieldRecordRevision = "record_revision"
	fieldRecordDigest   = "record_digest"
)

// marked returns fields plus the revision and digest of l's record, for the
// audit event of a successful key-changing operation.
func marked(fields map[string]string, l *loaded) map[string]string {
	out := make(map[string]string, len(fields)+2)
	maps.Copy(out, fields)
	out[fieldRecordRevision] = fmt.Sprint(l.rec.Revision)
	out[fieldRecordDigest] = l.digest
	return out
}

const rollbackHelp = "ward refuses to use it. Restore the key's newest record (from a backup taken after that audit event), " +
	"and find out who could write to the data directory or etcd; until then every use of the key fails. See docs/architecture.md, \"Key record rollback\""

// checkRecord compares a stored record with the newest revision the audit
// log recorded for it. Older (or, at the same revision, different) means
// the record was rolled back: it is reported and refused.
func (m *Manager) checkRecord(ctx context.Context, rec *KeyRecord, digest string) error {
	return m.checkRecordWith(ctx, m.witness, rec, digest)
}

// listWitness is the witness a listing checks its records with: one
// reading of the audit log for all of them where the witness offers it
// (if that reading fails, each record is checked on its own, failing as
// it would).
func (m *Manager) listWitness(ctx context.Context) Witness {
	if sw, ok := m.witness.(SyncedWitness); ok {
		if w, err := sw.Synced(ctx); err == nil {
			return w
		}
	}
	return m.witness
}

func (m *Manager) checkRecordWith(ctx context.Context, w Witness, rec *KeyRecord, digest string) error {
	if w == nil {
		return nil
	}
	mark, ok, err := w.Latest(ctx, rec.Name)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "key %q: cannot check its stored record against the audit log, so it is not used: %v", rec.Name, err)
	}
	if !ok {
		if rec.Revision == 0 {
			return nil // written before records carried revisions: nothing to compare
		}
		// Every revision of every key is audited since records carry
		// revisions, so a revised record the log does not know means the
		// log was wiped or replaced (a new log would forget destroyed
		// versions) or the record was planted.
		m.reportRollback(ctx, rec.Name, rec.Revision, Mark{}, rec, nil)
		return errs.Errorf(errs.RolledBack, "key %q: the stored record is revision %d but the audit log has no event for this key: "+
			"the audit log was wiped or replaced, or the record was copied in from elsewhere, so versions destroyed earlier could decrypt again; %s",
			rec.Name, rec.Revision, rollbackHelp)
	}
	var resurrected []string
	for _, v := range mark.Destroyed {
		if vr := rec.version(v); vr != nil && vr.State != StateDestroyed {
			resurrected = append(resurrected, fmt.Sprint(v))
		}
	}
	var what string
	switch {
	case rec.Revision < mark.Revision:
		what = fmt.Sprintf("the stored record is revision %d but the audit log recorded revision %d (audit event %d): the record was rolled back to an older copy", rec.Revision, mark.Revision, mark.Seq)
	case rec.Revision == mark.Revision && mark.Digest != "" && digest != mark.Digest:
		what = fmt.Sprintf("the stored record is revision %d but differs from the revision %d the audit log recorded (audit event %d): the record was replaced", rec.Revision, mark.Revision, mark.Seq)
	case len(resurrected) > 0:
		what = fmt.Sprintf("the stored record (revision %d) holds versions the audit log recorded as destroyed", rec.Revision)
	default:
		return nil
	}
	if len(resurrected) > 0 {
		what += fmt.Sprintf("; versions %s, destroyed according to the audit log, would decrypt again", strings.Join(resurrected, ","))
	}
	m.reportRollback(ctx, rec.Name, rec.Revision, mark, rec, resurrected)
	return errs.Errorf(errs.RolledBack, "key %q: %s; %s", rec.Name, what, rollbackHelp)
}

// checkMissing is called when a key has no stored record: if the audit log
// recorded one, the record was deleted or rolled back to before the key
// existed (the KMS never deletes key records).
func (m *Manager) checkMissing(ctx context.Context, name string) error {
	if m.witness == nil {
		return nil
	}
	mark, ok, err := m.witness.Latest(ctx, name)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "key %q: cannot check its absence against the audit log: %v", name, err)
	}
	if !ok || mark.Revision == 0 {
		return nil
	}
	m.reportRollback(ctx, name, 0, mark, nil, nil)
	return errs.Errorf(errs.RolledBack, "key %q: storage holds no record of it but the audit log recorded its revision %d (audit event %d): the record was deleted or storage was rolled back to before the key existed; %s", name, mark.Revision, mark.Seq, rollbackHelp)
}

// reportRollback logs, counts and audits a rolled-back record, once per key
// and stored revision (every use still fails).
func (m *Manager) reportRollback(ctx context.Context, name string, stored uint64, mark Mark, rec *KeyRecord, resurrected []string) {
	m.reportedMu.Lock()
	if r, ok := m.reported[name]; ok && r == stored {
		m.reportedMu.Unlock()
		return
	}
	m.reported[name] = stored
	m.reportedMu.Unlock()
	m.rollbacks.Add(1)
	var versions []string
	if rec != nil {
		for _, v := range rec.Versions {
			versions = append(versions, fmt.Sprintf("%d:%s", v.Version, v.State))
		}
	}
	destroyed := make([]string, 0, len(mark.Destroyed))
	for _, v := range slices.Sorted(slices.Values(mark.Destroyed)) {
		destroyed = append(destroyed, fmt.Sprint(v))
	}
	m.log.Error("kms: key record rolled back in storage; refusing to use it",
		"key", name, "stored_revision", stored, "audit_revision", mark.Revision, "audit_seq", mark.Seq,
		"stored_versions", strings.Join(versions, ","), "destroyed_per_audit", strings.Join(destroyed, ","),
		"resurrected_versions", strings.Join(resurrected, ","),
		"action", "restore the key's newest record from a backup; check who can write to storage")
	fields := map[string]string{
		"stored_revision": fmt.Sprint(stored), "audit_revision": fmt.Sprint(mark.Revision), "audit_seq": fmt.Sprint(mark.Seq),
	}
	if len(resurrected) > 0 {
		fields["resurrected_versions"] = strings.Join(resurrected, ",")
	}
	msg := "stored key record is older than the audit log's"
	if rec != nil && mark.Revision == 0 && len(mark.Destroyed) == 0 {
		msg = "stored key record has a revision the audit log has no event for (the log was wiped or replaced)"
	}
	ev := keyEvent(ctx, "key.rollback_detected", name, 0, audit.ResultError, fields)
	ev.Error = msg
	if err := m.audit.Record(ctx, ev); err != nil {
		m.log.Error("kms: could not audit a detected key record rollback", "key", name, "err", err)
	}
}
