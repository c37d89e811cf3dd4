package backup

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// Source is what Create reads: an unsealed authority's raw store.
type Source struct {
	// Raw is the raw store; one List("") of it is the snapshot (bbolt: one
	// read transaction, etcd: one revision).
	Raw store.Store
	// Open decrypts one raw barrier value (the unsealed barrier's OpenRaw);
	// Create uses it only for the audit head and events, to name the
	// checkpoint and hash the leaves.
	Open func(key string, value []byte) ([]byte, error)
	// Signer is the audit checkpoint signing key.
	Signer      crypto.Signer
	TrustDomain string
	WardVersion string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Create takes a snapshot of src and returns the whole backup file and its
// manifest. Audit events beyond the stored head (written by a commit whose
// head had not landed when the snapshot was taken) are left out: that
// commit happened after the snapshot.
func Create(ctx context.Context, src Source) ([]byte, Manifest, error) {
	if src.Now == nil {
		src.Now = time.Now
	}
	kvs, err := src.Raw.List(ctx, "")
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("reading the store snapshot: %w", err)
	}
	m := Manifest{Format: Format, Created: src.Now().UTC().Round(0), WardVersion: src.WardVersion,
		TrustDomain: src.TrustDomain, Backend: src.Raw.Backend(), Terms: map[string]int64{}}

	// The audit head of this snapshot names what the backup holds.
	var headVal []byte
	var sealCfg []byte
	for _, kv := range kvs {
		switch kv.Key {
		case audit.HeadKey:
			headVal = kv.Value
		case seal.ConfigKey:
			sealCfg = kv.Value
		}
	}
	if sealCfg == nil {
		return nil, Manifest{}, fmt.Errorf("the store holds no seal configuration (%s): the authority is not initialised", seal.ConfigKey)
	}
	cfg, err := seal.ParseConfig(sealCfg)
	if err != nil {
		return nil, Manifest{}, err
	}
	m.Seal = SealInfo{Type: cfg.Type, Shares: cfg.Shares, Threshold: cfg.Threshold}
	if headVal == nil {
		return nil, Manifest{}, fmt.Errorf("the store holds no audit head (%s): unseal the authority once before backing it up", audit.HeadKey)
	}
	head, err := src.Open(audit.HeadKey, headVal)
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("reading the audit head of the snapshot: %w", err)
	}
	size, cp, err := audit.ParseHead(head)
	if err != nil {
		return nil, Manifest{}, err
	}
	if cp == nil {
		return nil, Manifest{}, fmt.Errorf("the audit head at size %d holds no signed checkpoint yet; retry once an event was committed", size)
	}
	pub, err := checkpoint.P256Key(src.Signer.Public())
	if err != nil {
		return nil, Manifest{}, err
	}
	if err := checkpoint.Verify(*cp, pub); err != nil {
		return nil, Manifest{}, fmt.Errorf("the snapshot's audit checkpoint does not verify with this authority's key: %w", err)
	}
	// The stored checkpoint may lag the head's size (the log signs on a
	// schedule): name one for every event in the backup, signed now over
	// the head's root if need be (the events are checked against it below).
	var full checkpoint.Checkpoint
	if _, full, err = audit.SignedHead(head, src.Signer, cp.Origin, src.Now().UTC()); err != nil {
		return nil, Manifest{}, err
	}
	cp = &full
	pemKey, err := checkpoint.MarshalPublicKeyPEM(pub)
	if err != nil {
		return nil, Manifest{}, err
	}
	m.PublicKey = string(pemKey)
	if m.KeyID, err = keyutil.CheckpointKeyID(pub); err != nil {
		return nil, Manifest{}, err
	}
	m.Audit = AuditInfo{Entries: size, Checkpoint: *cp}

	var payload bytes.Buffer
	kvs = slices.DeleteFunc(kvs, func(kv store.KV) bool { return ephemeral(kv.Key) })
	leaves := make([]byte, 0, 32*size)
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	next := uint64(0)
	for _, kv := range kvs {
		if seq, ok := audit.ParseEventKey(kv.Key); ok {
			if seq >= size {
				continue // committed after the snapshot's head
			}
			if seq != next {
				return nil, Manifest{}, fmt.Errorf("the snapshot lacks audit event %d (next stored is %d): run `ward audit verify`", next, seq)
			}
			leaf, err := src.Open(kv.Key, kv.Value)
			if err != nil {
				return nil, Manifest{}, fmt.Errorf("reading audit event %d of the snapshot: %w", seq, err)
			}
			lh := audit.LeafHash(leaf)
			leaves = append(leaves, lh...)
			_ = rng.Append(lh, nil)
			if rng.End() == cp.Size {
				root, _ := rng.GetRootHash(nil)
				if !bytes.Equal(root, cp.RootHash) {
					return nil, Manifest{}, fmt.Errorf("the snapshot's audit events do not hash to its checkpoint at size %d: run `ward audit verify`", cp.Size)
				}
			}
			next++
		}
		if err := appendEntry(&payload, kv.Key, kv.Value); err != nil {
			return nil, Manifest{}, err
		}
		m.Entries++
		m.StoreRevision = max(m.StoreRevision, kv.Revision)
		if strings.HasPrefix(kv.Key, barrier.ReservedPrefix) {
			m.Reserved++
		} else if t, ok := barrier.ValueTerm(kv.Value); ok {
			m.Terms[strconv.FormatUint(uint64(t), 10)]++
		}
	}
	if next != size {
		return nil, Manifest{}, fmt.Errorf("the snapshot holds %d audit events but its head says %d: run `ward audit verify`", next, size)
	}
	if cp.Size == 0 && !bytes.Equal(cp.RootHash, rfc6962.DefaultHasher.EmptyRoot()) {
		return nil, Manifest{}, fmt.Errorf("the snapshot's empty-log checkpoint has a non-empty root")
	}
	payload.Write(leaves)
	sum := sha256.Sum256(payload.Bytes())
	m.PayloadSize = int64(payload.Len())
	m.PayloadSHA256 = hex.EncodeToString(sum[:])

	mj, err := json.Marshal(m)
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("encoding the manifest: %w", err)
	}
	d := sigDigest(mj)
	sig, err := src.Signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("signing the manifest: %w", err)
	}
	out := make([]byte, 0, len(Magic)+4+len(mj)+2+len(sig)+payload.Len())
	out = append(out, Magic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(mj)))
	out = append(out, mj...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(sig)))
	out = append(out, sig...)
	out = append(out, payload.Bytes()...)
	return out, m, nil
}

// ephemeralPrefixes hold process state bound to etcd leases (the HA
// members and election, internal/authority/ha): not data, never restored.
var ephemeralPrefixes = []string{"ha/"}

func ephemeral(key string) bool {
	for _, p := range ephemeralPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func appendEntry(w *bytes.Buffer, key string, value []byte) error {
	if len(key) == 0 || len(key) > MaxKey {
		return fmt.Errorf("store key of %d bytes cannot be backed up (1..%d)", len(key), MaxKey)
	}
	if len(value) > MaxValue {
		return fmt.Errorf("store value at %q is %d bytes, over the backup limit of %d", key, len(value), MaxValue)
	}
	var n [4]byte
	binary.BigEndian.PutUint16(n[:2], uint16(len(key)))
	w.Write(n[:2])
	w.WriteString(key)
	binary.BigEndian.PutUint32(n[:], uint32(len(value)))
	w.Write(n[:])
	w.Write(value)
	return nil
}
