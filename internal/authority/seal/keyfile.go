package seal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/wardproject/ward/internal/shared/errs"
)

// keyFileAAD binds the wrapped root key to its purpose.
const keyFileAAD = "ward keyfile seal v1 root key"

// ErrKeyFile: the key file is missing, unreadable, malformed, too widely
// readable, or not the one used at init.
var ErrKeyFile = errs.New(errs.Internal, "key-file seal")

// KeyFileSeal wraps the root key with AES-256-GCM under a 32-byte key read
// from a file, and unseals automatically. It is for development and tests
// only: whoever can read the file can unseal the authority.
type KeyFileSeal struct {
	path string
}

var _ AutoSeal = (*KeyFileSeal)(nil)

// NewKeyFile returns a key-file seal using path. The file is created at
// init (mode 0600) if it does not exist.
func NewKeyFile(path string) *KeyFileSeal { return &KeyFileSeal{path: path} }

// Type returns TypeKeyFile.
func (*KeyFileSeal) Type() string { return TypeKeyFile }

// Init loads the key file, creating it if missing, and wraps rootKey.
func (k *KeyFileSeal) Init(_ context.Context, rootKey []byte, opts InitOptions) (Config, [][]byte, error) {
	if opts.Shares != 0 || opts.Threshold != 0 {
		return Config{}, nil, fmt.Errorf("%w: the key-file seal takes no shares or threshold (got %d/%d)", ErrBadOptions, opts.Threshold, opts.Shares)
	}
	key, err := k.loadOrCreate()
	if err != nil {
		return Config{}, nil, err
	}
	defer clear(key)
	a, err := keyFileAEAD(key)
	if err != nil {
		return Config{}, nil, err
	}
	return Config{Wrapped: a.Seal(nil, nil, rootKey, []byte(keyFileAAD))}, nil, nil
}

// Unwrap reads the key file and recovers the root key.
func (k *KeyFileSeal) Unwrap(_ context.Context, cfg Config) ([]byte, error) {
	key, err := k.read()
	if err != nil {
		return nil, err
	}
	defer clear(key)
	a, err := keyFileAEAD(key)
	if err != nil {
		return nil, err
	}
	if len(cfg.Wrapped) < a.NonceSize()+a.Overhead() {
		return nil, fmt.Errorf("%w: the stored configuration at %s holds no wrapped root key; it is corrupt", ErrBadConfig, ConfigKey)
	}
	root, err := a.Open(nil, nil, cfg.Wrapped, []byte(keyFileAAD))
	if err != nil {
		return nil, fmt.Errorf("%w: %s does not open the root key wrapped at init: it is not the key file this authority was initialised with (or %s was altered)", ErrKeyFile, k.path, ConfigKey)
	}
	return root, nil
}

func keyFileAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("preparing AES key: %w", err)
	}
	return cipher.NewGCMWithRandomNonce(blk)
}

// read loads an existing key file, checking its size and permissions.
func (k *KeyFileSeal) read() ([]byte, error) {
	f, err := os.Open(k.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist; restore the key file this authority was initialised with", ErrKeyFile, k.path)
		}
		return nil, fmt.Errorf("%w: opening %s: %v", ErrKeyFile, k.path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKeyFile, k.path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, k.path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is accessible by group or others (mode %04o); run chmod 600 on it", ErrKeyFile, k.path, perm)
	}
	key := make([]byte, 32)
	n, err := io.ReadFull(f, key)
	var extra [1]byte
	if err != nil || n != 32 {
		clear(key)
		return nil, fmt.Errorf("%w: %s holds %d bytes, a key file holds exactly 32 random bytes", ErrKeyFile, k.path, n)
	}
	if m, _ := f.Read(extra[:]); m != 0 {
		clear(key)
		return nil, fmt.Errorf("%w: %s is longer than 32 bytes, a key file holds exactly 32 random bytes", ErrKeyFile, k.path)
	}
	return key, nil
}

// loadOrCreate reads the key file, or creates it atomically with a fresh
// key: written to a temporary file in the same directory, synced, then
// hard-linked into place, which fails rather than replace a file another
// process created meanwhile.
func (k *KeyFileSeal) loadOrCreate() ([]byte, error) {
	if _, err := os.Lstat(k.path); err == nil {
		return k.read()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %v", ErrKeyFile, k.path, err)
	}
	dir := filepath.Dir(k.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: creating directory for %s: %v", ErrKeyFile, k.path, err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	defer clear(key)
	tmp, err := os.CreateTemp(dir, ".ward-keyfile-*")
	if err != nil {
		return nil, fmt.Errorf("%w: creating %s: %v", ErrKeyFile, k.path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	_, werr := tmp.Write(key)
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("%w: writing %s: %v", ErrKeyFile, k.path, werr)
	}
	if err := os.Link(tmpName, k.path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: putting %s in place: %v", ErrKeyFile, k.path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	// Read back: this is our key, or the one a concurrent creator won with.
	return k.read()
}
