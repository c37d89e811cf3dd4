package envelope

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// LocalKMS is a KMS held in a local key file: for tests and offline use
// when no authority is reachable. It produces real ward KMS ciphertexts
// (key "local/<name>", AES-256-GCM with a per-message HKDF subkey), keeps
// every version it ever had so old files stay readable, and rewraps under
// its newest version. Safe for concurrent use.
type LocalKMS struct {
	mu       sync.RWMutex
	name     string
	latest   uint32
	raw      map[uint32][]byte
	versions map[uint32]*kmscrypto.Version
}

const localFormat = "ward-local-key/v1"

type localFile struct {
	Format   string         `json:"format"`
	Name     string         `json:"name"`
	Versions []localVersion `json:"versions"`
}

type localVersion struct {
	Version uint32 `json:"version"`
	Alg     string `json:"alg"`
	Key     string `json:"key"`
}

// NewLocalKMS creates a local key "local/<name>" with a fresh version 1.
func NewLocalKMS(name string) (*LocalKMS, error) {
	l := &LocalKMS{name: "local/" + name, raw: map[uint32][]byte{}, versions: map[uint32]*kmscrypto.Version{}}
	if err := kmsfmt.ValidateKeyName(l.name); err != nil {
		return nil, err
	}
	if _, err := l.Rotate(); err != nil {
		return nil, err
	}
	return l, nil
}

// KeyName returns "local/<name>".
func (l *LocalKMS) KeyName() string { return l.name }

// Latest returns the newest version.
func (l *LocalKMS) Latest() uint32 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.latest
}

// Rotate adds a new version; new data keys and rewraps use it.
func (l *LocalKMS) Rotate() (uint32, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addLocked(l.latest+1, kmscrypto.NewKey())
}

func (l *LocalKMS) addLocked(v uint32, key []byte) (uint32, error) {
	kv, err := kmscrypto.NewVersion(kmsfmt.AlgAES256GCMHKDF, key)
	if err != nil {
		return 0, err
	}
	l.raw[v], l.versions[v] = key, kv
	l.latest = max(l.latest, v)
	return v, nil
}

// LoadLocalKMS reads a key file written by Save. The file must not be
// readable by group or others.
func LoadLocalKMS(path string) (*LocalKMS, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("local key file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("local key file %s has mode %04o: it holds a master key, run chmod 600 %s", path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("local key file: %w", err)
	}
	var f localFile
	if err := json.Unmarshal(b, &f); err != nil || f.Format != localFormat {
		return nil, fmt.Errorf("local key file %s is not a %s file (create one with `ward local-key new`)", path, localFormat)
	}
	l := &LocalKMS{name: f.Name, raw: map[uint32][]byte{}, versions: map[uint32]*kmscrypto.Version{}}
	if err := kmsfmt.ValidateKeyName(f.Name); err != nil {
		return nil, fmt.Errorf("local key file %s: %w", path, err)
	}
	for _, v := range f.Versions {
		key, err := base64.StdEncoding.DecodeString(v.Key)
		if err != nil || v.Version == 0 || v.Alg != kmsfmt.AlgAES256GCMHKDF.String() || l.raw[v.Version] != nil {
			return nil, fmt.Errorf("local key file %s: version %d is damaged", path, v.Version)
		}
		if _, err := l.addLocked(v.Version, key); err != nil {
			return nil, fmt.Errorf("local key file %s: version %d: %w", path, v.Version, err)
		}
	}
	if l.latest == 0 {
		return nil, fmt.Errorf("local key file %s has no key versions", path)
	}
	return l, nil
}

// Save writes the key file atomically with mode 0600.
func (l *LocalKMS) Save(path string) error {
	l.mu.RLock()
	f := localFile{Format: localFormat, Name: l.name}
	for v, k := range l.raw {
		f.Versions = append(f.Versions, localVersion{Version: v, Alg: kmsfmt.AlgAES256GCMHKDF.String(), Key: base64.StdEncoding.EncodeToString(k)})
	}
	l.mu.RUnlock()
	sort.Slice(f.Versions, func(i, j int) bool { return f.Versions[i].Version < f.Versions[j].Version })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ward-key-*")
	if err != nil {
		return fmt.Errorf("saving local key: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(append(b, '\n'))
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("saving local key to %s: %w", path, err)
	}
	return nil
}

// GenerateDataKey implements KMS.
func (l *LocalKMS) GenerateDataKey(_ context.Context, keyName string, encCtx map[string]string) ([]byte, []byte, error) {
	if keyName != l.name {
		return nil, nil, fmt.Errorf("the local key file holds key %q, not %q", l.name, keyName)
	}
	l.mu.RLock()
	v, kv := l.latest, l.versions[l.latest]
	l.mu.RUnlock()
	dk := kmscrypto.NewKey()
	wrapped, err := kv.Encrypt(kmsfmt.Header{KeyName: l.name, Version: v}, dk, encCtx)
	if err != nil {
		return nil, nil, err
	}
	return dk, wrapped, nil
}

// Decrypt implements KMS.
func (l *LocalKMS) Decrypt(_ context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	h, raw, payload, err := kmsfmt.Parse(wrapped)
	if err != nil {
		return nil, err
	}
	if h.KeyName != l.name {
		return nil, fmt.Errorf("wrapped by key %q but the local key file holds %q", h.KeyName, l.name)
	}
	l.mu.RLock()
	kv := l.versions[h.Version]
	l.mu.RUnlock()
	if kv == nil {
		return nil, fmt.Errorf("key %s has no version %d in this local key file", l.name, h.Version)
	}
	return kv.Decrypt(h, raw, payload, encCtx)
}

// Rewrap implements KMS.
func (l *LocalKMS) Rewrap(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	pt, err := l.Decrypt(ctx, wrapped, encCtx)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	_, out, err := l.generateWith(pt, encCtx)
	return out, err
}

func (l *LocalKMS) generateWith(pt []byte, encCtx map[string]string) (uint32, []byte, error) {
	l.mu.RLock()
	v, kv := l.latest, l.versions[l.latest]
	l.mu.RUnlock()
	out, err := kv.Encrypt(kmsfmt.Header{KeyName: l.name, Version: v}, pt, encCtx)
	return v, out, err
}
