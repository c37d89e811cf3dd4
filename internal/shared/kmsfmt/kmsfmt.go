// Package kmsfmt is the wire format of a ward KMS ciphertext: a small,
// self-describing, versioned header (format version, algorithm, key name,
// key version) followed by the algorithm's payload. The header is always
// authenticated as part of the AEAD's associated data, together with the
// caller's encryption context, so neither can be changed without detection.
//
// Layout, format version 1 (all integers big-endian):
//
//	magic   4 bytes  "wKMS"
//	format  1 byte   0x01
//	alg     1 byte   algorithm id (see Alg)
//	namelen 1 byte   length of key name, 1..128
//	name    namelen  key name (validated by ValidateKeyName)
//	version 4 bytes  key version, >= 1
//	payload rest     algorithm-specific (nonce/salt, ciphertext, tag)
package kmsfmt

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Magic starts every binary KMS ciphertext.
var Magic = []byte("wKMS")

// FormatV1 is the only format version so far.
const FormatV1 = 1

// ArmorPrefix starts the text (base64) form of a ciphertext.
const ArmorPrefix = "ward:v1:"

// MaxNameLen bounds key names.
const MaxNameLen = 128

// Alg identifies the AEAD construction of a key version.
type Alg uint8

const (
	// AlgAES256GCM: AES-256-GCM with a random 96-bit nonce.
	// Payload: nonce(12) || ciphertext || tag(16).
	AlgAES256GCM Alg = 1
	// AlgAES256GCMHKDF: a fresh subkey per message from HKDF-SHA256 over
	// the version key with a random 256-bit salt, then AES-256-GCM with a
	// random nonce; no practical limit on messages per key version.
	// Payload: salt(32) || nonce(12) || ciphertext || tag(16).
	AlgAES256GCMHKDF Alg = 2
	// AlgAES256GCMHSM: AES-256-GCM computed inside a PKCS#11 HSM
	// (CKM_AES_GCM) with a key that never leaves it, random 96-bit nonce.
	// Payload: nonce(12) || ciphertext || tag(16).
	AlgAES256GCMHSM Alg = 3
)

var algNames = map[Alg]string{
	AlgAES256GCM:     "aes-256-gcm",
	AlgAES256GCMHKDF: "aes-256-gcm-hkdf-sha256",
	AlgAES256GCMHSM:  "aes-256-gcm-hsm",
}

func (a Alg) String() string {
	if n, ok := algNames[a]; ok {
		return n
	}
	return fmt.Sprintf("unknown-alg(%d)", uint8(a))
}

// ParseAlg maps an algorithm name to its id.
func ParseAlg(name string) (Alg, error) {
	for a, n := range algNames {
		if n == name {
			return a, nil
		}
	}
	known := make([]string, 0, len(algNames))
	for _, n := range algNames {
		known = append(known, n)
	}
	sort.Strings(known)
	return 0, fmt.Errorf("unknown algorithm %q: use one of %s", name, strings.Join(known, ", "))
}

// Header is the parsed, authenticated prefix of a ciphertext.
type Header struct {
	Format  uint8
	Alg     Alg
	KeyName string
	Version uint32
}

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("malformed ciphertext")

// ValidateKeyName checks a key name: 1..128 characters, segments of
// [a-z0-9._-] separated by single slashes, each segment starting with a
// letter or digit (for example "tenant-a/payments").
func ValidateKeyName(name string) error {
	if name == "" {
		return errors.New("key name is empty: give a name such as tenant-a/payments")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("key name is %d characters long: the limit is %d", len(name), MaxNameLen)
	}
	// strings.SplitSeq, not Split: no slice on every KMS call's check.
	for seg := range strings.SplitSeq(name, "/") {
		if seg == "" {
			return fmt.Errorf("key name %q has an empty segment: do not start or end with '/' or use '//'", name)
		}
		if !isAlnum(seg[0]) {
			return fmt.Errorf("key name %q: each segment must start with a lowercase letter or digit", name)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
				return fmt.Errorf("key name %q contains %q: use lowercase letters, digits, '.', '_', '-' and '/'", name, c)
			}
		}
	}
	return nil
}

func isAlnum(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }

// AppendHeader appends the binary header for h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	dst = append(dst, Magic...)
	dst = append(dst, FormatV1, byte(h.Alg), byte(len(h.KeyName)))
	dst = append(dst, h.KeyName...)
	return binary.BigEndian.AppendUint32(dst, h.Version)
}

// Parse splits a binary ciphertext into its header, the header's raw bytes
// (to be authenticated) and the payload. It never panics on any input.
func Parse(ct []byte) (h Header, rawHeader, payload []byte, err error) {
	if len(ct) < len(Magic)+3 {
		return h, nil, nil, fmt.Errorf("%w: %d bytes is too short to be a ward KMS ciphertext", ErrMalformed, len(ct))
	}
	if !bytes.Equal(ct[:len(Magic)], Magic) {
		return h, nil, nil, fmt.Errorf("%w: missing the ward KMS magic bytes (is this a ward ciphertext?)", ErrMalformed)
	}
	p := len(Magic)
	h.Format = ct[p]
	if h.Format != FormatV1 {
		return h, nil, nil, fmt.Errorf("%w: format version %d is not supported by this ward (supports %d): upgrade ward", ErrMalformed, h.Format, FormatV1)
	}
	h.Alg = Alg(ct[p+1])
	if _, ok := algNames[h.Alg]; !ok {
		return h, nil, nil, fmt.Errorf("%w: unknown algorithm id %d", ErrMalformed, ct[p+1])
	}
	n := int(ct[p+2])
	p += 3
	if n == 0 || len(ct) < p+n+4 {
		return h, nil, nil, fmt.Errorf("%w: truncated header", ErrMalformed)
	}
	h.KeyName = string(ct[p : p+n])
	if err := ValidateKeyName(h.KeyName); err != nil {
		return h, nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	p += n
	h.Version = binary.BigEndian.Uint32(ct[p:])
	p += 4
	if h.Version == 0 {
		return h, nil, nil, fmt.Errorf("%w: key version 0 does not exist", ErrMalformed)
	}
	return h, ct[:p], ct[p:], nil
}

// AAD builds the associated data: the raw header followed by the
// canonical encoding of the encryption context (keys sorted, each key and
// value length-prefixed), so {"a":"bc"} and {"ab":"c"} differ.
func AAD(rawHeader []byte, encCtx map[string]string) []byte {
	out := make([]byte, 0, len(rawHeader)+16*len(encCtx)+8)
	out = append(out, rawHeader...)
	return AppendContext(out, encCtx)
}

// AppendContext appends the canonical encoding of an encryption context.
func AppendContext(dst []byte, encCtx map[string]string) []byte {
	keys := make([]string, 0, len(encCtx))
	for k := range encCtx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		v := encCtx[k]
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	return dst
}

// Armor returns the text form "ward:v1:<base64>".
func Armor(ct []byte) string { return ArmorPrefix + base64.StdEncoding.EncodeToString(ct) }

// Dearmor accepts either the binary form or the text form (surrounding
// whitespace ignored) and returns the binary form.
func Dearmor(in []byte) ([]byte, error) {
	if bytes.HasPrefix(in, Magic) {
		return in, nil
	}
	s := strings.TrimSpace(string(in))
	if !strings.HasPrefix(s, ArmorPrefix) {
		return nil, fmt.Errorf("%w: not a ward ciphertext: it starts neither with the ward KMS magic bytes nor with %q", ErrMalformed, ArmorPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(s[len(ArmorPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: bad base64 after %q: %v", ErrMalformed, ArmorPrefix, err)
	}
	return b, nil
}
