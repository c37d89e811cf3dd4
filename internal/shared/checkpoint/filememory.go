package checkpoint

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/wardproject/ward/internal/shared/atomicfile"
)

// FileMemory is the Memory of an agent: one file for the one log it
// witnesses (its authority's), holding the newest verified checkpoint and
// the public key that signed it, pinned on first sight:
//
//	{"checkpoint": <the `ward audit checkpoint` format>, "public_key_pem": "..."}
//
// mode 0600, replaced atomically. The file is read once, at open; its
// checkpoint must verify with its key. One process owns it (Lock only
// serializes callers in this process, which the Witness does already).
type FileMemory struct {
	path string

	mu sync.Mutex
	cp *Checkpoint
}

// fileMemoryFormat is the on-disk form.
type fileMemoryFormat struct {
	Checkpoint   json.RawMessage `json:"checkpoint"`
	PublicKeyPEM string          `json:"public_key_pem"`
}

// OpenFileMemory reads path, if it exists. A file that does not parse or
// verify is an error: look at it, do not overwrite it.
func OpenFileMemory(path string) (*FileMemory, error) {
	m := &FileMemory{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	var f fileMemoryFormat
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s does not parse: %w", path, err)
	}
	cp, err := Parse(f.Checkpoint)
	if err != nil {
		return nil, err
	}
	pub, err := ParsePublicKeyPEM([]byte(f.PublicKeyPEM))
	if err != nil {
		return nil, err
	}
	if err := Verify(cp, pub); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.cp = &cp
	return m, nil
}

// Path is the file.
func (m *FileMemory) Path() string { return m.path }

// Latest is the remembered checkpoint, nil if none.
func (m *FileMemory) Latest() *Checkpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cp
}

// Lock implements Memory.
func (m *FileMemory) Lock() (func(), error) { return func() {}, nil }

// PinnedKey implements Memory: the key of the remembered checkpoint, for
// every origin (the file witnesses one log).
func (m *FileMemory) PinnedKey(string) (string, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cp == nil {
		return "", m.path, nil
	}
	return m.cp.KeyID, m.path, nil
}

// PinKey implements Memory: the file pins its checkpoint's key, so
// accepting another key forgets the remembered checkpoint (in memory; the
// file is replaced by the next Put).
func (m *FileMemory) PinKey(cp Checkpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cp != nil && m.cp.KeyID != cp.KeyID {
		m.cp = nil
	}
	return nil
}

// Newest implements Memory: the remembered checkpoint, whatever its origin
// (a checkpoint of another origin is another log, which Compare refuses).
func (m *FileMemory) Newest(_, keyID string) (*Checkpoint, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cp == nil || m.cp.KeyID != keyID {
		return nil, m.path, nil
	}
	return m.cp, m.path, nil
}

// Put implements Memory.
func (m *FileMemory) Put(cp Checkpoint, pub crypto.PublicKey) error {
	pemKey, err := MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	cj, err := Encode(cp)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(fileMemoryFormat{Checkpoint: cj, PublicKeyPEM: string(pemKey)}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.path, b, 0o600); err != nil {
		return err
	}
	m.mu.Lock()
	m.cp = &cp
	m.mu.Unlock()
	return nil
}
