package audit

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

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
// size, returns a *RollbackError and changes nothing.
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
	return writeAtomic(p, b)
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

// writeAtomic writes data to a 0600 temporary file in path's directory,
// syncs it and renames it over path, then syncs the directory.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("checkpoint memory: writing %s: %w", tmp, err)
		}
	} else {
		f.Close()
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
