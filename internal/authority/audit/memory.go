package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// CheckpointMemory remembers the newest checkpoint a verifier has accepted
// for each log (by signing key id), the way Certificate Transparency
// monitors and the Go checksum database client do: every later head must
// prove it extends the remembered one, so a log that was truncated and
// given an older head back is caught even without --checkpoint. Files are
// <dir>/<key id>.json (the `ward audit checkpoint` format), mode 0600, in a
// directory of mode 0700, replaced atomically under a lock.
//
// It also remembers, per origin (ward/<trust domain>), the signing key id
// it last accepted, in <dir>/origin-<sha256 of the origin>.json: a log
// wiped in storage comes back under a new signing key with an empty
// history, and keying the memory by key id alone would accept it as a new
// log. A checkpoint of a known origin under another key fails with a
// *KeyChangedError until AcceptKey records the new key.
//
// It never moves backwards: Remember refuses a smaller checkpoint, or a
// different root at the same size, with a *RollbackError. It does not prove
// consistency itself: remember only checkpoints a Verifier proved to extend
// the one Load returned.
type CheckpointMemory struct {
	dir string
}

// RollbackError says that a log's head went backwards (or forked) against
// the checkpoint remembered for it.
type RollbackError struct {
	Remembered, Head checkpoint.Checkpoint
	Path             string // the file holding Remembered
}

func (e *RollbackError) Error() string {
	r, h := e.Remembered, e.Head
	what := "went BACKWARDS"
	if h.Size == r.Size {
		what = "FORKED"
	}
	return fmt.Sprintf("AUDIT LOG ROLLBACK: log %q %s: it now has %d events with root %s (signed %s), but %d events with root %s (signed %s) were verified earlier and remembered in %s; "+
		"the stored log was truncated, rolled back or replaced. Treat it as an incident: keep the remembered checkpoint, compare with other verifiers and backups. "+
		"Only if the authority was deliberately re-initialised, delete that file",
		r.Origin, what, h.Size, hex.EncodeToString(h.RootHash), h.Time.UTC().Format(time.RFC3339),
		r.Size, hex.EncodeToString(r.RootHash), r.Time.UTC().Format(time.RFC3339), e.Path)
}

// KeyChangedError says that a log's origin was verified earlier under
// another signing key.
type KeyChangedError struct {
	Origin             string
	OldKeyID, NewKeyID string
	Path               string // the file that remembers OldKeyID
}

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("AUDIT SIGNING KEY CHANGED: the audit signing key of %s changed from %s to %s (the old key is remembered in %s). "+
		"An authority's audit signing key never changes: its audit log was wiped or replaced in storage (a new log forgets every earlier event, "+
		"including which key versions were destroyed), or this is another authority using the same trust domain. Treat it as an incident and find out why. "+
		"Only if the authority was deliberately re-initialised, run `ward audit verify --accept-new-key`",
		e.Origin, e.OldKeyID, e.NewKeyID, e.Path)
}

// originRecord is the content of an origin file.
type originRecord struct {
	Origin string    `json:"origin"`
	KeyID  string    `json:"key_id"`
	Since  time.Time `json:"since"`
}

// OpenCheckpointMemory uses dir, creating it (mode 0700) if needed. A
// directory others can write to is refused.
func OpenCheckpointMemory(dir string) (*CheckpointMemory, error) {
	if dir == "" {
		return nil, errors.New("checkpoint memory: no directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("checkpoint memory: creating %s: %w (set another with --state-dir or WARD_STATE_DIR)", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint memory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("checkpoint memory: %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("checkpoint memory: %s has mode %o, writable by others: make it 0700 (chmod 700 %s)", dir, fi.Mode().Perm(), dir)
	}
	return &CheckpointMemory{dir: dir}, nil
}

// Dir returns the memory's directory.
func (m *CheckpointMemory) Dir() string { return m.dir }

// Path returns the file that remembers the log signed by keyID.
func (m *CheckpointMemory) Path(keyID string) (string, error) {
	if len(keyID) != 64 {
		return "", fmt.Errorf("checkpoint memory: key id %q is not 64 hex digits", keyID)
	}
	if _, err := hex.DecodeString(keyID); err != nil {
		return "", fmt.Errorf("checkpoint memory: key id %q is not hex", keyID)
	}
	return filepath.Join(m.dir, keyID+".json"), nil
}

// originPath returns the file that remembers origin's signing key.
func (m *CheckpointMemory) originPath(origin string) string {
	h := sha256.Sum256([]byte(origin))
	return filepath.Join(m.dir, "origin-"+hex.EncodeToString(h[:])+".json")
}

// OriginKey returns the signing key id remembered for origin and the file
// that remembers it, or "" if the origin was never verified. A memory
// written before origins were remembered has no origin file: then the
// newest checkpoint file of that origin names the key.
func (m *CheckpointMemory) OriginKey(origin string) (keyID, path string, err error) {
	p := m.originPath(origin)
	b, err := os.ReadFile(p)
	if err == nil {
		var r originRecord
		if err := json.Unmarshal(b, &r); err != nil || r.Origin != origin || len(r.KeyID) != 64 {
			return "", "", fmt.Errorf("checkpoint memory: %s is unreadable or names another origin: it was altered; restore it, or delete it if you trust the log today", p)
		}
		return r.KeyID, p, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("checkpoint memory: %w", err)
	}
	files, err := filepath.Glob(filepath.Join(m.dir, "*.json"))
	if err != nil {
		return "", "", fmt.Errorf("checkpoint memory: %w", err)
	}
	var newest *checkpoint.Checkpoint
	for _, f := range files {
		id := strings.TrimSuffix(filepath.Base(f), ".json")
		if _, err := m.Path(id); err != nil {
			continue // not a checkpoint file
		}
		cp, err := m.Load(id)
		if err != nil || cp == nil || cp.Origin != origin {
			continue
		}
		if newest == nil || cp.Time.After(newest.Time) {
			newest, path = cp, f
		}
	}
	if newest == nil {
		return "", "", nil
	}
	return newest.KeyID, path, nil
}

// CheckKey returns a *KeyChangedError if cp's origin was verified before
// under another signing key.
func (m *CheckpointMemory) CheckKey(cp checkpoint.Checkpoint) error {
	old, p, err := m.OriginKey(cp.Origin)
	if err != nil {
		return err
	}
	if old != "" && old != cp.KeyID {
		return &KeyChangedError{Origin: cp.Origin, OldKeyID: old, NewKeyID: cp.KeyID, Path: p}
	}
	return nil
}

// AcceptKey records cp's key as its origin's signing key from now on (the
// operator accepted a new key, e.g. after a deliberate re-initialisation).
func (m *CheckpointMemory) AcceptKey(cp checkpoint.Checkpoint) error {
	if err := cp.Check(); err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return m.writeOrigin(cp)
}

func (m *CheckpointMemory) writeOrigin(cp checkpoint.Checkpoint) error {
	b, err := json.Marshal(originRecord{Origin: cp.Origin, KeyID: cp.KeyID, Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	return memoryErr(atomicfile.Write(m.originPath(cp.Origin), append(b, '\n'), 0o600))
}

// Load returns the checkpoint remembered for the log signed by keyID, or
// nil if there is none. The file's signature is not checked here: the
// Verifier checks it as the Earlier checkpoint.
func (m *CheckpointMemory) Load(keyID string) (*checkpoint.Checkpoint, error) {
	p, err := m.Path(keyID)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint memory: %w", err)
	}
	cp, err := checkpoint.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("checkpoint memory: %s: %w (it was altered; restore it or, if you trust the log today, delete it)", p, err)
	}
	if cp.KeyID != keyID {
		return nil, fmt.Errorf("checkpoint memory: %s holds a checkpoint of key %s: the file was moved or altered", p, cp.KeyID)
	}
	return &cp, nil
}

// Remember stores cp as the newest checkpoint of its log, unless the
// remembered one is newer: a smaller size, or another root at the same
// size, returns a *RollbackError and changes nothing. A checkpoint whose
// origin is remembered under another signing key returns a
// *KeyChangedError and changes nothing (AcceptKey first).
func (m *CheckpointMemory) Remember(cp checkpoint.Checkpoint) error {
	if err := cp.Check(); err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	p, err := m.Path(cp.KeyID)
	if err != nil {
		return err
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.CheckKey(cp); err != nil {
		return err
	}
	if _, err := os.Stat(m.originPath(cp.Origin)); errors.Is(err, os.ErrNotExist) {
		if err := m.writeOrigin(cp); err != nil {
			return err
		}
	}
	old, err := m.Load(cp.KeyID)
	if err != nil {
		return err
	}
	if old != nil {
		if err := Compare(*old, cp); err != nil {
			var rb *RollbackError
			if errors.As(err, &rb) {
				rb.Path = p
			}
			return err
		}
		if old.Size == cp.Size {
			return nil // the same checkpoint: nothing to record
		}
	}
	b, err := checkpoint.Encode(cp)
	if err != nil {
		return err
	}
	return memoryErr(atomicfile.Write(p, b, 0o600))
}

// Compare returns a *RollbackError if head is behind remembered (smaller,
// or the same size with another root). A larger head must still be proven
// consistent with remembered.
func Compare(remembered, head checkpoint.Checkpoint) error {
	if head.Size < remembered.Size || (head.Size == remembered.Size && !bytes.Equal(head.RootHash, remembered.RootHash)) {
		return &RollbackError{Remembered: remembered, Head: head}
	}
	return nil
}

// lock takes an exclusive flock on <dir>/.lock so concurrent verifiers
// cannot interleave read-compare-write.
func (m *CheckpointMemory) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(m.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("checkpoint memory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("checkpoint memory: locking %s: %w", f.Name(), err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// memoryErr names the checkpoint memory in a write error.
func memoryErr(err error) error {
	if err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	return nil
}
