// Package envelope encrypts data of any size under a fresh data key per
// object, wrapped by a KMS key: a streaming, segmented, authenticated
// format (docs/format.md) with an io.WriteCloser to encrypt, an io.Reader
// and an io.ReaderAt to decrypt, header-only rewrap, and segments sealed
// and opened in parallel with bounded memory.
//
// The data key never leaves the process and is never written anywhere;
// the KMS that wraps it is either ward's authority (package client) or a
// LocalKMS key file for tests and offline use.
package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime"

	"golang.org/x/crypto/chacha20poly1305"
)

// KMS wraps and unwraps data keys. Wrapped keys are ward KMS ciphertexts
// (they name key and version); encCtx is bound to them as associated data.
type KMS interface {
	// GenerateDataKey returns a fresh 32-byte data key and its wrapped form.
	GenerateDataKey(ctx context.Context, keyName string, encCtx map[string]string) (plaintext, wrapped []byte, err error)
	// Decrypt unwraps a wrapped data key.
	Decrypt(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error)
	// Rewrap re-wraps under the newest version of the same key without
	// revealing the data key to the caller.
	Rewrap(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error)
}

// DataKeySize is the size of a data key.
const DataKeySize = 32

type config struct {
	alg            Alg
	segSize        int
	classification string
	meta           map[string]string
	extCtx         map[string]string
	workers        int
}

// Option configures NewWriter, NewReader, NewReaderAt and Rewrap.
type Option func(*config)

// WithAlgorithm selects the segment AEAD (default AES256GCM). Writer only.
func WithAlgorithm(a Alg) Option { return func(c *config) { c.alg = a } }

// WithSegmentSize sets the plaintext bytes per segment (default 64 KiB,
// MinSegmentSize..MaxSegmentSize). Writer only.
func WithSegmentSize(n int) Option { return func(c *config) { c.segSize = n } }

// WithClassification stores a classification label (e.g. "confidential")
// in the header; it is authenticated and bound to the wrapped key, so the
// KMS sees it (policy, audit). Writer only.
func WithClassification(label string) Option { return func(c *config) { c.classification = label } }

// WithMetadata stores user metadata in the header, authenticated and bound
// to the wrapped key. Writer only. The map is copied.
func WithMetadata(m map[string]string) Option {
	return func(c *config) {
		c.meta = make(map[string]string, len(m))
		for k, v := range m {
			c.meta[k] = v
		}
	}
}

// WithContext binds an encryption context that is not stored in the file:
// the same context must be given to decrypt, verify and rewrap. Keys must
// not start with "ward." or "meta.".
func WithContext(m map[string]string) Option {
	return func(c *config) {
		c.extCtx = make(map[string]string, len(m))
		for k, v := range m {
			c.extCtx[k] = v
		}
	}
}

// WithConcurrency bounds the goroutines sealing or opening segments
// (default GOMAXPROCS; 1 = no extra goroutines).
func WithConcurrency(n int) Option { return func(c *config) { c.workers = n } }

func newConfig(opts []Option) (*config, error) {
	c := &config{alg: AES256GCM, segSize: DefaultSegmentSize, workers: runtime.GOMAXPROCS(0)}
	for _, o := range opts {
		o(c)
	}
	if c.workers < 1 {
		c.workers = 1
	}
	if c.segSize < MinSegmentSize || c.segSize > MaxSegmentSize {
		return nil, fmt.Errorf("%w: segment size %d is outside %d..%d", ErrInvalid, c.segSize, MinSegmentSize, MaxSegmentSize)
	}
	if _, ok := algNames[c.alg]; !ok {
		return nil, fmt.Errorf("%w: algorithm %s", ErrInvalid, c.alg)
	}
	if err := validateMeta(c.classification, c.meta); err != nil {
		return nil, err
	}
	if err := validateExtContext(c.extCtx); err != nil {
		return nil, err
	}
	return c, nil
}

// keys is the per-object key material derived from the data key.
type keys struct {
	aead   cipher.AEAD
	hdrKey []byte
	prefix [prefixSize]byte
	seg    int
}

const (
	infoSegment = "ward envelope v1 segment key"
	infoHeader  = "ward envelope v1 header key"
)

// deriveKeys runs HKDF-SHA256 over the data key with the object's salt.
func deriveKeys(h *Header, dk []byte) (*keys, error) {
	if len(dk) != DataKeySize {
		return nil, fmt.Errorf("%w: the KMS returned a %d-byte data key, want %d", ErrUnwrap, len(dk), DataKeySize)
	}
	if h.Alg == ChaCha20Poly1305 && fips140.Enabled() {
		return nil, fmt.Errorf("%w: chacha20-poly1305 is not FIPS 140-3 approved and FIPS mode is on (GODEBUG=fips140): use aes-256-gcm", ErrUnsupported)
	}
	prk, err := hkdf.Extract(sha256.New, dk, h.salt[:])
	if err != nil {
		return nil, err
	}
	sk, err := hkdf.Expand(sha256.New, prk, infoSegment+string([]byte{byte(h.Alg)}), 32)
	if err != nil {
		return nil, err
	}
	hk, err := hkdf.Expand(sha256.New, prk, infoHeader, 32)
	if err != nil {
		return nil, err
	}
	k := &keys{hdrKey: hk, prefix: h.prefix, seg: h.SegmentSize}
	switch h.Alg {
	case AES256GCM:
		b, err := aes.NewCipher(sk)
		if err != nil {
			return nil, err
		}
		if k.aead, err = cipher.NewGCM(b); err != nil {
			return nil, fmt.Errorf("%w: AES-GCM with counter nonces is unavailable here (%v); FIPS 140-3 'only' mode forbids it, use GODEBUG=fips140=on", ErrUnsupported, err)
		}
	case ChaCha20Poly1305:
		if k.aead, err = chacha20poly1305.New(sk); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: algorithm %s", ErrUnsupported, h.Alg)
	}
	return k, nil
}

// headerTag computes the header tag (authentication and key commitment).
func (k *keys) headerTag(h *Header, extCtx map[string]string) [tagSize]byte {
	m := hmac.New(sha256.New, k.hdrKey)
	m.Write(h.macInput(extCtx))
	var t [tagSize]byte
	copy(t[:], m.Sum(nil))
	return t
}

// nonce builds prefix || uint32 index || last flag.
func (k *keys) nonce(dst *[12]byte, i uint64, last bool) []byte {
	copy(dst[:prefixSize], k.prefix[:])
	binary.BigEndian.PutUint32(dst[prefixSize:], uint32(i))
	dst[11] = 0
	if last {
		dst[11] = 1
	}
	return dst[:]
}

// unwrap asks the KMS for the data key of h and checks the header tag.
func unwrap(ctx context.Context, h *Header, kms KMS, c *config) (*keys, error) {
	dk, err := kms.Decrypt(ctx, h.wrapped, h.kmsContext(c.extCtx))
	if err != nil {
		return nil, fmt.Errorf("%w (key %s version %d): %v; check the key, the encryption context and that this header belongs to this file", ErrUnwrap, h.KeyName, h.KeyVersion, err)
	}
	k, err := deriveKeys(h, dk)
	clear(dk)
	if err != nil {
		return nil, err
	}
	t := k.headerTag(h, c.extCtx)
	if !hmac.Equal(t[:], h.tag[:]) {
		return nil, fmt.Errorf("%w: a header field (algorithm, segment size, salt, nonce prefix, classification or metadata) or the context was altered, or the wrapped key belongs to another file", ErrHeaderAuth)
	}
	return k, nil
}

// segCT is the ciphertext size of a full segment.
func segCT(seg int) int { return seg + segTag }

// batchBytes is about how much plaintext one unit of parallel work holds
// (a variable so tests can make every segment its own batch).
var batchBytes = 1 << 20

// batchSegments picks how many segments one unit of parallel work holds:
// about batchBytes, at least one segment.
func batchSegments(seg int) int { return max(1, batchBytes/seg) }
