package agent

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/wardproject/ward/internal/shared/atomicfile"
)

// On-disk cache: data_dir/cache.key holds 32 random bytes (mode 0600,
// created at first start); data_dir/cache.bin is
//
//	magic (8 bytes "WARDAC1\n") || nonce (12) || AES-256-GCM(JSON state)
//
// with the magic as additional data. The file is replaced atomically (temp
// file, fsync, rename, fsync of the directory).
const (
	cacheKeyName  = "cache.key"
	cacheFileName = "cache.bin"
	cacheMagic    = "WARDAC1\n"
	cacheVersion  = 1
	// maxCacheSize bounds what Load reads (10,000 SVIDs take about 25 MB).
	maxCacheSize = 512 << 20
)

// ErrCacheCorrupt is wrapped by Load when the cache file does not decrypt
// or decode: it was damaged, tampered with, or written under another key.
var ErrCacheCorrupt = errors.New("agent cache is corrupt or was written under another key")

// diskCache reads and writes the encrypted cache file.
type diskCache struct {
	dir  string
	aead cipher.AEAD
}

// openDiskCache creates dir (0700) if needed, and loads the cache key,
// creating it at first start.
func openDiskCache(dir string) (*diskCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent data_dir %s: %w", dir, err)
	}
	key, err := loadOrCreateKey(filepath.Join(dir, cacheKeyName))
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("agent cache key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("agent cache key: %w", err)
	}
	return &diskCache{dir: dir, aead: aead}, nil
}

func loadOrCreateKey(path string) ([]byte, error) {
	for range 2 {
		fi, err := os.Stat(path)
		if err == nil {
			if fi.Mode().Perm()&0o077 != 0 {
				return nil, fmt.Errorf("agent cache key %s is readable by group or others (mode %v): run chmod 600 %s", path, fi.Mode().Perm(), path)
			}
			key, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("agent cache key: %w", err)
			}
			if len(key) != 32 {
				return nil, fmt.Errorf("agent cache key %s has %d bytes, want 32: it is damaged; remove it and %s (the agent then attests again)", path, len(key), cacheFileName)
			}
			return key, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("agent cache key: %w", err)
		}
		// Create it whole under a temporary name, then link it into place:
		// the key file never exists half written, and a concurrent creator
		// cannot be overwritten (link fails if the name exists).
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("agent cache key: %w", err)
		}
		tmp, err := atomicfile.Temp(filepath.Dir(path), ".cache.key-", key, 0o600)
		if err != nil {
			return nil, fmt.Errorf("agent cache key: %w", err)
		}
		err = os.Link(tmp, path)
		os.Remove(tmp)
		if err == nil {
			return key, atomicfile.SyncDir(filepath.Dir(path))
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("agent cache key: %w", err)
		}
		// Lost a race with another creator: read theirs.
	}
	return nil, fmt.Errorf("agent cache key %s: could not create or read it", path)
}

// seal encrypts plaintext into the cache file format.
func (d *diskCache) seal(plaintext []byte) ([]byte, error) {
	out := make([]byte, len(cacheMagic)+d.aead.NonceSize(), len(cacheMagic)+d.aead.NonceSize()+len(plaintext)+d.aead.Overhead())
	copy(out, cacheMagic)
	nonce := out[len(cacheMagic):]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return d.aead.Seal(out, nonce, plaintext, []byte(cacheMagic)), nil
}

// open decrypts the cache file format.
func (d *diskCache) open(b []byte) ([]byte, error) {
	hdr := len(cacheMagic) + d.aead.NonceSize()
	if len(b) < hdr+d.aead.Overhead() || string(b[:len(cacheMagic)]) != cacheMagic {
		return nil, fmt.Errorf("%w: not a ward agent cache file (bad header)", ErrCacheCorrupt)
	}
	pt, err := d.aead.Open(nil, b[len(cacheMagic):hdr], b[hdr:], []byte(cacheMagic))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed", ErrCacheCorrupt)
	}
	return pt, nil
}

// Save encrypts st and replaces the cache file atomically.
func (d *diskCache) Save(st *cacheState) error {
	st.Version = cacheVersion
	pt, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("agent cache: encode: %w", err)
	}
	ct, err := d.seal(pt)
	clear(pt)
	if err != nil {
		return fmt.Errorf("agent cache: encrypt: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(d.dir, cacheFileName), ct, 0o600); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	return nil
}

// Load reads and decrypts the cache file; fs.ErrNotExist (wrapped) if
// there is none yet.
func (d *diskCache) Load() (*cacheState, error) {
	path := filepath.Join(d.dir, cacheFileName)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent cache: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("agent cache: %w", err)
	}
	if fi.Size() > maxCacheSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrCacheCorrupt, path, fi.Size(), maxCacheSize)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("agent cache: read %s: %w", path, err)
	}
	pt, err := d.open(b)
	if err != nil {
		return nil, err
	}
	return decodeCacheState(pt)
}

func decodeCacheState(pt []byte) (*cacheState, error) {
	var st cacheState
	if err := json.Unmarshal(pt, &st); err != nil {
		return nil, fmt.Errorf("%w: decode: %v", ErrCacheCorrupt, err)
	}
	if st.Version != cacheVersion {
		return nil, fmt.Errorf("%w: version %d, this agent reads version %d", ErrCacheCorrupt, st.Version, cacheVersion)
	}
	return &st, nil
}

// cacheState is what the agent keeps across restarts. Private keys are
// PKCS#8 DER; certificates DER.
type cacheState struct {
	Version     int    `json:"version"`
	TrustDomain string `json:"trust_domain"`
	// Agent is the agent's own SVID; nil after eviction.
	Agent *cachedAgent `json:"agent,omitempty"`
	// UsedJoinToken is the SHA-256 (hex) of the last join token used, so a
	// restart never offers a spent token again.
	UsedJoinToken  string            `json:"used_join_token,omitempty"`
	Bundle         []byte            `json:"bundle,omitempty"` // SPIFFE bundle JSON
	BundleSequence uint64            `json:"bundle_sequence,omitempty"`
	Federated      map[string][]byte `json:"federated,omitempty"`
	Entries        []cachedEntry     `json:"entries,omitempty"`
	SVIDs          []cachedSVID      `json:"svids,omitempty"`
	JWTs           []cachedJWT       `json:"jwts,omitempty"`
	LastSync       time.Time         `json:"last_sync,omitzero"`
}

type cachedAgent struct {
	ID      string    `json:"id"`
	Chain   [][]byte  `json:"chain"`
	Key     []byte    `json:"key"`
	RenewAt time.Time `json:"renew_at"`
}

type cachedEntry struct {
	ID            string   `json:"id"`
	SPIFFEID      string   `json:"spiffe_id"`
	Selectors     []string `json:"selectors"`
	TTLSeconds    int64    `json:"ttl_seconds,omitempty"`
	DNSNames      []string `json:"dns_names,omitempty"`
	Hint          string   `json:"hint,omitempty"`
	FederatesWith []string `json:"federates_with,omitempty"`
	Revision      int64    `json:"revision,omitempty"`
}

type cachedSVID struct {
	EntryID  string    `json:"entry_id"`
	Spec     string    `json:"spec"`
	Chain    [][]byte  `json:"chain"`
	Key      []byte    `json:"key"`
	RotateAt time.Time `json:"rotate_at"`
}

type cachedJWT struct {
	Key     string    `json:"key"` // SPIFFE ID and sorted audience
	Token   string    `json:"token"`
	Issued  time.Time `json:"issued"`
	Refresh time.Time `json:"refresh"`
	Expires time.Time `json:"expires"`
}
