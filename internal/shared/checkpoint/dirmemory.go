package checkpoint

import (
	"crypto"
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
)

// DirMemory is the Memory of `ward audit verify`: one directory for every
// log it verified. The newest checkpoint of each log (by signing key id) is
// <dir>/<key id>.json (the `ward audit checkpoint` format); the signing key
// of each origin (ward/<trust domain>) is <dir>/origin-<sha256 of the
// origin>.json ({"origin", "key_id", "since"}). Files have mode 0600, the
// directory 0700; writes are atomic and serialized by an flock on
// <dir>/.lock, so concurrent verifiers cannot interleave read-compare-write.
// A memory written before origins were remembered has no origin files: the
// newest checkpoint file of an origin then names its key.
type DirMemory struct {
	dir string
}

// originRecord is the content of an origin file.
type originRecord struct {
	Origin string    `json:"origin"`
	KeyID  string    `json:"key_id"`
	Since  time.Time `json:"since"`
}

// OpenDirMemory uses dir, creating it (mode 0700) if needed. A directory
// others can write to is refused.
func OpenDirMemory(dir string) (*DirMemory, error) {
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
	return &DirMemory{dir: dir}, nil
}

// Dir returns the memory's directory.
func (m *DirMemory) Dir() string { return m.dir }

// Path returns the file that remembers the log signed by keyID.
func (m *DirMemory) Path(keyID string) (string, error) {
	if len(keyID) != 64 {
		return "", fmt.Errorf("checkpoint memory: key id %q is not 64 hex digits", keyID)
	}
	if _, err := hex.DecodeString(keyID); err != nil {
		return "", fmt.Errorf("checkpoint memory: key id %q is not hex", keyID)
	}
	return filepath.Join(m.dir, keyID+".json"), nil
}

// originPath returns the file that remembers origin's signing key.
func (m *DirMemory) originPath(origin string) string {
	h := sha256.Sum256([]byte(origin))
	return filepath.Join(m.dir, "origin-"+hex.EncodeToString(h[:])+".json")
}

// PinnedKey implements Memory.
func (m *DirMemory) PinnedKey(origin string) (keyID, path string, err error) {
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
	var newest *Checkpoint
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

// PinKey implements Memory.
func (m *DirMemory) PinKey(cp Checkpoint) error {
	b, err := json.Marshal(originRecord{Origin: cp.Origin, KeyID: cp.KeyID, Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	return memoryErr(atomicfile.Write(m.originPath(cp.Origin), append(b, '\n'), 0o600))
}

// Load returns the checkpoint remembered for the log signed by keyID, or
// nil if there is none. The file's signature is not checked here: the
// caller checks it (`ward audit verify` as the Earlier checkpoint).
func (m *DirMemory) Load(keyID string) (*Checkpoint, error) {
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
	cp, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("checkpoint memory: %s: %w (it was altered; restore it or, if you trust the log today, delete it)", p, err)
	}
	if cp.KeyID != keyID {
		return nil, fmt.Errorf("checkpoint memory: %s holds a checkpoint of key %s: the file was moved or altered", p, cp.KeyID)
	}
	return &cp, nil
}

// Newest implements Memory.
func (m *DirMemory) Newest(_, keyID string) (*Checkpoint, string, error) {
	p, err := m.Path(keyID)
	if err != nil {
		return nil, "", err
	}
	cp, err := m.Load(keyID)
	return cp, p, err
}

// Put implements Memory: it writes cp's file and, for an origin seen for
// the first time, the origin's file.
func (m *DirMemory) Put(cp Checkpoint, _ crypto.PublicKey) error {
	p, err := m.Path(cp.KeyID)
	if err != nil {
		return err
	}
	if _, err := os.Stat(m.originPath(cp.Origin)); errors.Is(err, os.ErrNotExist) {
		if err := m.PinKey(cp); err != nil {
			return err
		}
	}
	b, err := Encode(cp)
	if err != nil {
		return err
	}
	return memoryErr(atomicfile.Write(p, b, 0o600))
}

// Lock implements Memory with an exclusive flock on <dir>/.lock.
func (m *DirMemory) Lock() (func(), error) {
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
