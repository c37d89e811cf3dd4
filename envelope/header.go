package envelope

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"unicode/utf8"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// Magic starts every envelope file.
var Magic = []byte("wENV")

// FormatV1 is the only format version so far.
const FormatV1 = 1

// Alg identifies the AEAD that seals the segments.
type Alg uint8

const (
	// AES256GCM is AES-256-GCM (the default; FIPS 140-3 approved).
	AES256GCM Alg = 1
	// ChaCha20Poly1305 is RFC 8439 ChaCha20-Poly1305 (fast without AES
	// hardware; refused in FIPS 140-3 mode).
	ChaCha20Poly1305 Alg = 2
)

var algNames = map[Alg]string{AES256GCM: "aes-256-gcm", ChaCha20Poly1305: "chacha20-poly1305"}

func (a Alg) String() string {
	if n, ok := algNames[a]; ok {
		return n
	}
	return fmt.Sprintf("unknown-alg(%d)", uint8(a))
}

// ParseAlg maps "aes-256-gcm" or "chacha20-poly1305" to its id.
func ParseAlg(name string) (Alg, error) {
	for a, n := range algNames {
		if n == name {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown algorithm %q: use aes-256-gcm or chacha20-poly1305", name)
}

// Limits of the format. Parsers reject anything outside them.
const (
	MinSegmentSize     = 4 << 10
	MaxSegmentSize     = 16 << 20
	DefaultSegmentSize = 64 << 10
	MaxClassification  = 64
	MaxMetadata        = 64
	MaxMetaKey         = 128
	MaxMetaValue       = 4096
	MaxWrappedKey      = 2048
	maxHeader          = 1 << 20

	saltSize   = 32
	prefixSize = 7
	tagSize    = 32                                        // header tag (HMAC-SHA256)
	segTag     = 16                                        // AEAD tag per segment
	fixedSize  = 4 + 1 + 1 + 4 + 4 + saltSize + prefixSize // through the nonce prefix
	maxSegs    = 1 << 32
)

// Errors. Every error returned by this package wraps exactly one of them,
// so callers can branch with errors.Is; the message adds what and where.
var (
	ErrNotEnvelope = errors.New("not a ward envelope")
	ErrUnsupported = errors.New("unsupported envelope")
	ErrMalformed   = errors.New("malformed envelope header")
	ErrUnwrap      = errors.New("the KMS refused to unwrap the data key")
	ErrHeaderAuth  = errors.New("envelope header failed authentication")
	ErrSegmentAuth = errors.New("segment failed authentication")
	ErrTruncated   = errors.New("envelope is truncated")
	ErrTrailing    = errors.New("envelope has data after its last segment")
	ErrInvalid     = errors.New("invalid envelope parameters")
	ErrTooLarge    = errors.New("input too large for the envelope format")
	// ErrInputFault: reading the caller's memory faulted, e.g. a
	// memory-mapped input file shrank while it was encrypted (the sealing
	// goroutines turn the fault into this error instead of a crash).
	ErrInputFault = errors.New("the input memory could not be read")
)

// Header is the parsed header of an envelope file. It holds no secret:
// the data key inside it is wrapped by the KMS.
type Header struct {
	Format         uint8
	Alg            Alg
	SegmentSize    int               // plaintext bytes per segment
	Classification string            // may be empty
	Metadata       map[string]string // user metadata; never nil after parsing
	KeyName        string            // KMS key that wraps the data key
	KeyVersion     uint32            // version of KeyName that wrapped it
	KeyAlg         string            // KMS algorithm of that version
	ObjectID       string            // hex of the per-object salt
	Len            int               // header length in bytes; segments start here

	salt    [saltSize]byte
	prefix  [prefixSize]byte
	wrapped []byte
	tag     [tagSize]byte
	raw     []byte
}

// Encoded returns the header's bytes exactly as they appear in the file.
func (h *Header) Encoded() []byte { return bytes.Clone(h.raw) }

// validateLabel checks a classification or metadata key: printable ASCII
// letters, digits and ".-_:/" only, so labels print safely.
func validateLabel(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s %q is %d bytes long: the limit is %d", ErrInvalid, what, s, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == ':' || c == '/') {
			return fmt.Errorf("%w: %s %q contains %q: use letters, digits and . - _ : /", ErrInvalid, what, s, c)
		}
	}
	return nil
}

func validateValue(k, v string) error {
	if len(v) > MaxMetaValue {
		return fmt.Errorf("%w: metadata %q value is %d bytes long: the limit is %d", ErrInvalid, k, len(v), MaxMetaValue)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%w: metadata %q value is not valid UTF-8", ErrInvalid, k)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: metadata %q value contains control character %U", ErrInvalid, k, r)
		}
	}
	return nil
}

func validateMeta(classification string, meta map[string]string) error {
	if err := validateLabel("classification", classification, MaxClassification); err != nil {
		return err
	}
	if len(meta) > MaxMetadata {
		return fmt.Errorf("%w: %d metadata entries: the limit is %d", ErrInvalid, len(meta), MaxMetadata)
	}
	for k, v := range meta {
		if k == "" {
			return fmt.Errorf("%w: empty metadata key", ErrInvalid)
		}
		if err := validateLabel("metadata key", k, MaxMetaKey); err != nil {
			return err
		}
		if err := validateValue(k, v); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// appendAuthenticated appends the header bytes from offset 0 through the
// end of the metadata, but with the header length field (bytes 6..10)
// left out: that part is what the header tag covers besides the context.
func (h *Header) appendBody(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(h.SegmentSize))
	dst = append(dst, h.salt[:]...)
	dst = append(dst, h.prefix[:]...)
	dst = append(dst, byte(len(h.Classification)))
	dst = append(dst, h.Classification...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(h.Metadata)))
	for _, k := range sortedKeys(h.Metadata) {
		v := h.Metadata[k]
		dst = append(dst, byte(len(k)))
		dst = append(dst, k...)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(v)))
		dst = append(dst, v...)
	}
	return dst
}

// macInput is what the header tag authenticates: every header field except
// the header length, the wrapped key (authenticated by the KMS instead, so
// rewrap needs no data key) and the tag itself, then the caller's
// unstored context.
func (h *Header) macInput(extCtx map[string]string) []byte {
	b := append([]byte(nil), Magic...)
	b = append(b, h.Format, byte(h.Alg))
	b = h.appendBody(b)
	return kmsfmt.AppendContext(b, extCtx)
}

// encode builds raw from the fields (tag included) and sets Len.
func (h *Header) encode() {
	b := append([]byte(nil), Magic...)
	b = append(b, h.Format, byte(h.Alg), 0, 0, 0, 0)
	b = h.appendBody(b)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.wrapped)))
	b = append(b, h.wrapped...)
	b = append(b, h.tag[:]...)
	binary.BigEndian.PutUint32(b[6:], uint32(len(b)))
	h.raw = b
	h.Len = len(b)
}

// ParseHeader reads exactly one header from r (and nothing more), checks
// its structure and returns it. It does not authenticate it: that needs
// the data key (NewReader does it). It never panics on any input.
func ParseHeader(r io.Reader) (*Header, error) {
	var pre [10]byte
	n, err := io.ReadFull(r, pre[:])
	if err != nil {
		if n == 0 && err == io.EOF {
			return nil, fmt.Errorf("%w: input is empty (0 bytes)", ErrNotEnvelope)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("reading envelope header: %w", err)
		}
		if !bytes.HasPrefix(Magic, pre[:min(n, len(Magic))]) {
			return nil, fmt.Errorf("%w: missing the magic bytes %q", ErrNotEnvelope, Magic)
		}
		return nil, fmt.Errorf("%w: header cut off after %d bytes", ErrTruncated, n)
	}
	if !bytes.Equal(pre[:4], Magic) {
		return nil, fmt.Errorf("%w: missing the magic bytes %q (is this file encrypted by ward?)", ErrNotEnvelope, Magic)
	}
	if pre[4] != FormatV1 {
		return nil, fmt.Errorf("%w: format version %d (this ward reads version %d): upgrade ward", ErrUnsupported, pre[4], FormatV1)
	}
	if _, ok := algNames[Alg(pre[5])]; !ok {
		return nil, fmt.Errorf("%w: algorithm id %d is unknown to this ward: upgrade ward", ErrUnsupported, pre[5])
	}
	hl := binary.BigEndian.Uint32(pre[6:])
	if hl < fixedSize+1+2+2+1+tagSize || hl > maxHeader {
		return nil, fmt.Errorf("%w: header length %d is outside %d..%d", ErrMalformed, hl, fixedSize+1+2+2+1+tagSize, maxHeader)
	}
	raw := make([]byte, hl)
	copy(raw, pre[:])
	if n, err := io.ReadFull(r, raw[10:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
			return nil, fmt.Errorf("%w: header says %d bytes but the input ends after %d", ErrTruncated, hl, 10+n)
		}
		return nil, fmt.Errorf("reading envelope header: %w", err)
	}
	return parseRaw(raw)
}

// parseRaw parses a complete header whose length field equals len(raw).
func parseRaw(raw []byte) (*Header, error) {
	h := &Header{Format: raw[4], Alg: Alg(raw[5]), Len: len(raw), raw: raw, Metadata: map[string]string{}}
	p := 10
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	need := func(k int) bool { return p+k <= len(raw)-tagSize }
	if !need(4 + saltSize + prefixSize + 1) {
		return nil, bad("header too short")
	}
	seg := binary.BigEndian.Uint32(raw[p:])
	if seg < MinSegmentSize || seg > MaxSegmentSize {
		return nil, bad("segment size %d is outside %d..%d", seg, MinSegmentSize, MaxSegmentSize)
	}
	h.SegmentSize = int(seg)
	p += 4
	copy(h.salt[:], raw[p:])
	p += saltSize
	copy(h.prefix[:], raw[p:])
	p += prefixSize
	h.ObjectID = hex.EncodeToString(h.salt[:])
	cl := int(raw[p])
	p++
	if cl > MaxClassification || !need(cl+2) {
		return nil, bad("classification length %d does not fit", cl)
	}
	h.Classification = string(raw[p : p+cl])
	if err := validateLabel("classification", h.Classification, MaxClassification); err != nil {
		return nil, bad("%v", err)
	}
	p += cl
	m := int(binary.BigEndian.Uint16(raw[p:]))
	p += 2
	if m > MaxMetadata {
		return nil, bad("%d metadata entries: the limit is %d", m, MaxMetadata)
	}
	prev := ""
	for i := 0; i < m; i++ {
		if !need(1) {
			return nil, bad("metadata entry %d cut off", i)
		}
		kl := int(raw[p])
		p++
		if kl == 0 || kl > MaxMetaKey || !need(kl+2) {
			return nil, bad("metadata entry %d: key length %d does not fit", i, kl)
		}
		k := string(raw[p : p+kl])
		p += kl
		vl := int(binary.BigEndian.Uint16(raw[p:]))
		p += 2
		if vl > MaxMetaValue || !need(vl) {
			return nil, bad("metadata %q: value length %d does not fit", k, vl)
		}
		v := string(raw[p : p+vl])
		p += vl
		if i > 0 && k <= prev {
			return nil, bad("metadata keys are not in strictly ascending order at %q", k)
		}
		prev = k
		if err := validateLabel("metadata key", k, MaxMetaKey); err != nil {
			return nil, bad("%v", err)
		}
		if err := validateValue(k, v); err != nil {
			return nil, bad("%v", err)
		}
		h.Metadata[k] = v
	}
	if !need(2) {
		return nil, bad("wrapped key length cut off")
	}
	wl := int(binary.BigEndian.Uint16(raw[p:]))
	p += 2
	if wl == 0 || wl > MaxWrappedKey || p+wl != len(raw)-tagSize {
		return nil, bad("wrapped key length %d does not match the header length %d", wl, len(raw))
	}
	h.wrapped = raw[p : p+wl]
	kh, _, _, err := kmsfmt.Parse(h.wrapped)
	if err != nil {
		return nil, bad("wrapped data key: %v", err)
	}
	h.KeyName, h.KeyVersion, h.KeyAlg = kh.KeyName, kh.Version, kh.Alg.String()
	p += wl
	copy(h.tag[:], raw[p:])
	return h, nil
}

// kmsContext is the encryption context bound to the wrapped data key: the
// format's identity, the object id, the classification, the metadata
// (prefixed "meta.") and the caller's unstored context.
func (h *Header) kmsContext(extCtx map[string]string) map[string]string {
	c := make(map[string]string, 3+len(h.Metadata)+len(extCtx))
	for k, v := range extCtx {
		c[k] = v
	}
	c["ward.format"] = "envelope/v1"
	c["ward.object"] = h.ObjectID
	if h.Classification != "" {
		c["ward.classification"] = h.Classification
	}
	for k, v := range h.Metadata {
		c["meta."+k] = v
	}
	return c
}

func validateExtContext(c map[string]string) error {
	for k := range c {
		if len(k) >= 5 && (k[:5] == "ward." || k[:5] == "meta.") {
			return fmt.Errorf("%w: context key %q uses a reserved prefix (ward. or meta.)", ErrInvalid, k)
		}
		if k == "" {
			return fmt.Errorf("%w: empty context key", ErrInvalid)
		}
	}
	return nil
}
