package backup

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// VerifyOptions says what Verify checks beyond the file itself.
type VerifyOptions struct {
	// TrustedKey, if set, is the audit checkpoint key the backup must be
	// signed by (else only the key inside the manifest is used, and the
	// caller should show its id to be compared).
	TrustedKey crypto.PublicKey
	// Entry, if set, receives every raw store entry in order (Restore
	// writes them). An error stops verification and is returned.
	Entry func(key string, value []byte) error
}

// Verified is what Verify found in a good backup.
type Verified struct {
	Manifest Manifest
	// PublicKey is the key that signed it.
	PublicKey crypto.PublicKey
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Verify reads a backup from r and checks it without any secret: the
// header, the manifest's signature (and key, against TrustedKey when set),
// the audit checkpoint's signature, the payload's SHA-256 and size, the
// structure of every entry (sorted, bounded, barrier-encrypted values, a
// keyring, a seal configuration matching the manifest, every audit event
// 0..n-1 present) and that the audit leaf hashes add up to the signed
// checkpoint. Every failure wraps ErrRefused and says what was wrong.
func Verify(r io.Reader, opts VerifyOptions) (*Verified, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	m, pub, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	if opts.TrustedKey != nil {
		tk, err := checkpoint.P256Key(opts.TrustedKey)
		if err != nil {
			return nil, err
		}
		if !tk.Equal(pub) {
			tid, _ := keyutil.CheckpointKeyID(tk)
			return nil, refuse("the backup is signed by key %s, not by the trusted audit key %s: it comes from another authority, or was forged", m.KeyID, tid)
		}
	}
	h := sha256.New()
	pr := &payloadReader{r: io.TeeReader(io.LimitReader(br, m.PayloadSize), h), left: m.PayloadSize}
	structErr := checkPayload(pr, m, opts.Entry)
	var restoreErr *entryError
	if errors.As(structErr, &restoreErr) {
		return nil, restoreErr.err
	}
	// Hash whatever is left of the declared payload, then look for more.
	if _, err := io.Copy(io.Discard, pr); err != nil {
		return nil, fmt.Errorf("reading the backup: %w", err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	trailing := false
	if _, err := br.ReadByte(); err == nil {
		trailing = true
	}
	switch {
	case pr.read < m.PayloadSize:
		return nil, refuse("the payload is %d bytes, the signed manifest says %d: the file was truncated", pr.read, m.PayloadSize)
	case got != m.PayloadSHA256:
		reason := ""
		if structErr != nil {
			reason = " (first problem seen: " + strings.TrimPrefix(structErr.Error(), ErrRefused.Error()+": ") + ")"
		}
		return nil, refuse("the payload's SHA-256 is %s, the signed manifest says %s: the backup was altered or damaged after it was written%s", got, m.PayloadSHA256, reason)
	case trailing:
		return nil, refuse("data follows the %d-byte payload the manifest declares: the file was altered", m.PayloadSize)
	case structErr != nil:
		return nil, structErr
	}
	return &Verified{Manifest: m, PublicKey: pub}, nil
}

type entryError struct{ err error }

func (e *entryError) Error() string { return e.err.Error() }

// readHeader reads and checks the magic, the manifest and its signature.
func readHeader(br *bufio.Reader) (Manifest, *ecdsa.PublicKey, error) {
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(br, magic); err != nil {
		return Manifest{}, nil, refuse("the file is too short to be a ward backup (%v)", err)
	}
	if string(magic) != Magic {
		return Manifest{}, nil, refuse("the file does not start with %q: it is not a ward backup, or its header was altered", strings.TrimSpace(Magic))
	}
	var n4 [4]byte
	if _, err := io.ReadFull(br, n4[:]); err != nil {
		return Manifest{}, nil, refuse("the header ends early (%v)", err)
	}
	ml := binary.BigEndian.Uint32(n4[:])
	if ml == 0 || ml > MaxManifest {
		return Manifest{}, nil, refuse("the header declares a manifest of %d bytes (1..%d): the header was altered", ml, MaxManifest)
	}
	mj := make([]byte, ml)
	if _, err := io.ReadFull(br, mj); err != nil {
		return Manifest{}, nil, refuse("the manifest ends early (%v): the file was truncated or its header altered", err)
	}
	var n2 [2]byte
	if _, err := io.ReadFull(br, n2[:]); err != nil {
		return Manifest{}, nil, refuse("the signature length is missing (%v)", err)
	}
	sl := binary.BigEndian.Uint16(n2[:])
	if sl == 0 || sl > MaxSignature {
		return Manifest{}, nil, refuse("the header declares a signature of %d bytes (1..%d): the header was altered", sl, MaxSignature)
	}
	sig := make([]byte, sl)
	if _, err := io.ReadFull(br, sig); err != nil {
		return Manifest{}, nil, refuse("the signature ends early (%v)", err)
	}
	m, err := parseManifest(mj)
	if err != nil {
		return Manifest{}, nil, err
	}
	pk, err := checkpoint.ParsePublicKeyPEM([]byte(m.PublicKey))
	if err != nil {
		return Manifest{}, nil, refuse("the manifest's public key: %v", err)
	}
	pub, err := checkpoint.P256Key(pk)
	if err != nil {
		return Manifest{}, nil, refuse("the manifest's public key: %v", err)
	}
	if id, _ := keyutil.CheckpointKeyID(pub); id != m.KeyID {
		return Manifest{}, nil, refuse("the manifest's key_id %s is not the id of its public key (%s)", m.KeyID, id)
	}
	d := sigDigest(mj)
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return Manifest{}, nil, refuse("the manifest's signature does not verify with key %s: the manifest or the signature was altered", m.KeyID)
	}
	if err := checkpoint.Verify(m.Audit.Checkpoint, pub); err != nil {
		return Manifest{}, nil, refuse("the audit checkpoint in the manifest: %v", err)
	}
	if want := "ward/" + m.TrustDomain; m.Audit.Checkpoint.Origin != want {
		return Manifest{}, nil, refuse("the audit checkpoint names log %q, the manifest trust domain %q", m.Audit.Checkpoint.Origin, m.TrustDomain)
	}
	return m, pub, nil
}

func parseManifest(mj []byte) (Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(mj))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, refuse("the manifest does not decode: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, refuse("data follows the manifest's JSON object")
	}
	switch {
	case m.Format != Format:
		return Manifest{}, refuse("the manifest has format %d; this ward reads format %d", m.Format, Format)
	case m.PayloadSize < 0 || m.Entries < 0 || m.Reserved < 0 || m.Reserved > m.Entries || m.Entries > MaxEntries:
		return Manifest{}, refuse("the manifest's sizes are out of range (payload %d, entries %d, reserved %d)", m.PayloadSize, m.Entries, m.Reserved)
	case m.Audit.Entries > uint64(m.Entries) || m.Audit.Checkpoint.Size > m.Audit.Entries:
		return Manifest{}, refuse("the manifest's audit counts are inconsistent (%d events, %d entries, checkpoint at %d)", m.Audit.Entries, m.Entries, m.Audit.Checkpoint.Size)
	case len(m.PayloadSHA256) != 64:
		return Manifest{}, refuse("the manifest's payload_sha256 is not 64 hex digits")
	}
	if uint64(m.PayloadSize) < 32*m.Audit.Entries+7*uint64(m.Entries) {
		return Manifest{}, refuse("the manifest's payload of %d bytes cannot hold %d entries and %d audit leaf hashes", m.PayloadSize, m.Entries, m.Audit.Entries)
	}
	for t, n := range m.Terms {
		if v, err := strconv.ParseUint(t, 10, 32); err != nil || v == 0 || n < 0 {
			return Manifest{}, refuse("the manifest's barrier_terms names term %q", t)
		}
	}
	return m, nil
}

// payloadReader counts what was read.
type payloadReader struct {
	r    io.Reader
	left int64
	read int64
}

func (p *payloadReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.read += int64(n)
	return n, err
}

func (p *payloadReader) full(b []byte) error {
	_, err := io.ReadFull(p, b)
	return err
}

// checkPayload parses the payload and checks its structure. Errors from
// entry are wrapped in *entryError.
func checkPayload(pr *payloadReader, m Manifest, entry func(string, []byte) error) error {
	var (
		prev     string
		reserved int64
		terms    = map[string]int64{}
		nextSeq  uint64
		sealCfg  []byte
		keyring  bool
		n4       [4]byte
	)
	for i := int64(0); i < m.Entries; i++ {
		if err := pr.full(n4[:2]); err != nil {
			return refuse("the payload ends inside entry %d of %d", i+1, m.Entries)
		}
		kl := int(binary.BigEndian.Uint16(n4[:2]))
		if kl == 0 || kl > MaxKey {
			return refuse("entry %d has a key of %d bytes (1..%d)", i+1, kl, MaxKey)
		}
		kb := make([]byte, kl)
		if err := pr.full(kb); err != nil {
			return refuse("the payload ends inside the key of entry %d", i+1)
		}
		key := string(kb)
		if i > 0 && key <= prev {
			return refuse("entry %d (%q) is not after entry %d (%q): keys must be sorted and unique", i+1, key, i, prev)
		}
		prev = key
		if err := pr.full(n4[:]); err != nil {
			return refuse("the payload ends inside entry %d (%q)", i+1, key)
		}
		vl := int64(binary.BigEndian.Uint32(n4[:]))
		if vl > MaxValue || vl > m.PayloadSize-pr.read {
			return refuse("entry %d (%q) declares a value of %d bytes, more than the limit or the rest of the payload", i+1, key, vl)
		}
		val := make([]byte, vl)
		if err := pr.full(val); err != nil {
			return refuse("the payload ends inside the value of entry %d (%q)", i+1, key)
		}
		switch {
		case key == barrier.KeyringKey:
			if t, ok := barrier.ValueTerm(val); !ok || t != 0 {
				return refuse("the keyring at %s is not a root-key-wrapped barrier value", key)
			}
			keyring = true
			reserved++
		case key == seal.ConfigKey:
			sealCfg = val
			reserved++
		case strings.HasPrefix(key, barrier.ReservedPrefix):
			reserved++
		default:
			t, ok := barrier.ValueTerm(val)
			if !ok || t == 0 {
				return refuse("entry %q is not a barrier-encrypted value (a plaintext value in storage, or an altered one)", key)
			}
			terms[strconv.FormatUint(uint64(t), 10)]++
			if seq, ok := audit.ParseEventKey(key); ok {
				if seq != nextSeq {
					return refuse("audit event %d is missing from the backup (found %d next)", nextSeq, seq)
				}
				nextSeq++
			}
		}
		if entry != nil {
			if err := entry(key, val); err != nil {
				return &entryError{err}
			}
		}
	}
	if nextSeq != m.Audit.Entries {
		return refuse("the backup holds %d audit events, the manifest says %d", nextSeq, m.Audit.Entries)
	}
	if !keyring {
		return refuse("the backup holds no barrier keyring (%s): it cannot be unsealed", barrier.KeyringKey)
	}
	if sealCfg == nil {
		return refuse("the backup holds no seal configuration (%s)", seal.ConfigKey)
	}
	cfg, err := seal.ParseConfig(sealCfg)
	if err != nil {
		return refuse("the backup's seal configuration: %v", err)
	}
	if (SealInfo{Type: cfg.Type, Shares: cfg.Shares, Threshold: cfg.Threshold}) != m.Seal {
		return refuse("the backup's seal configuration (%s, %d of %d) differs from the manifest's", cfg.Type, cfg.Threshold, cfg.Shares)
	}
	if reserved != m.Reserved {
		return refuse("the backup holds %d reserved entries, the manifest says %d", reserved, m.Reserved)
	}
	if len(terms) != len(m.Terms) {
		return refuse("the backup's values use %d barrier terms, the manifest names %d", len(terms), len(m.Terms))
	}
	for t, n := range terms {
		if m.Terms[t] != n {
			return refuse("the backup holds %d values under barrier term %s, the manifest says %d", n, t, m.Terms[t])
		}
	}
	// The audit leaf hashes must add up to the signed checkpoint.
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	cp := m.Audit.Checkpoint
	lh := make([]byte, 32)
	for i := uint64(0); i < m.Audit.Entries; i++ {
		if err := pr.full(lh); err != nil {
			return refuse("the payload ends inside audit leaf hash %d", i)
		}
		if i < cp.Size {
			_ = rng.Append(bytes.Clone(lh), nil)
		}
	}
	root := rfc6962.DefaultHasher.EmptyRoot()
	if cp.Size > 0 {
		root, _ = rng.GetRootHash(nil)
	}
	if !bytes.Equal(root, cp.RootHash) {
		return refuse("the audit leaf hashes do not add up to the signed checkpoint (size %d): the audit log in the backup is not the one the checkpoint names", cp.Size)
	}
	if pr.read != m.PayloadSize {
		return refuse("the payload holds %d bytes after its last part, the manifest says %d in all", m.PayloadSize-pr.read, m.PayloadSize)
	}
	return nil
}
