package audit

import (
	"crypto"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// HeadKey and EventKeyPrefix are where an unprefixed log (the authority's)
// keeps its head and its events; backups read them from a store snapshot.
const (
	HeadKey        = headKeySuffix
	EventKeyPrefix = eventKeyPrefix
)

// EventKey is the storage key of event seq in an unprefixed log.
func EventKey(seq uint64) string { return (&Log{}).eventKey(seq) }

// ParseEventKey returns the sequence number an event key names; ok is false
// for any key that EventKey would not produce.
func ParseEventKey(key string) (seq uint64, ok bool) {
	digits, found := strings.CutPrefix(key, eventKeyPrefix)
	if !found || len(digits) != 20 {
		return 0, false
	}
	for i := range len(digits) {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	return seq, true
}

// ParseHead decodes a stored (decrypted) audit head: the number of stored
// events and the latest signed checkpoint (its size may lag the events
// after an interrupted multi-chunk commit; nil before the first commit).
func ParseHead(b []byte) (size uint64, cp *checkpoint.Checkpoint, err error) {
	h, err := decodeHead(b)
	if err != nil {
		return 0, nil, err
	}
	return h.Size, h.Checkpoint, nil
}

// LeafHash is the RFC 6962 leaf hash of a stored event (the Merkle tree's
// leaf for it).
func LeafHash(leaf []byte) []byte { return leafHash(leaf) }

// SignedHead decodes a stored (decrypted) audit head like ParseHead and
// returns a checkpoint for its full size: the stored one if it covers the
// size under signer's key and origin, else one signed now over the head's
// root (the stored checkpoint lags the size between the committer's
// scheduled signatures, WithCheckpointInterval). Backups name it.
func SignedHead(b []byte, signer crypto.Signer, origin string, now time.Time) (uint64, checkpoint.Checkpoint, error) {
	h, err := decodeHead(b)
	if err != nil {
		return 0, checkpoint.Checkpoint{}, err
	}
	pub, err := checkpoint.P256Key(signer.Public())
	if err != nil {
		return 0, checkpoint.Checkpoint{}, fmt.Errorf("audit checkpoint signer: %w", err)
	}
	keyID, err := keyutil.CheckpointKeyID(pub)
	if err != nil {
		return 0, checkpoint.Checkpoint{}, fmt.Errorf("audit checkpoint signer: %w", err)
	}
	if c := h.Checkpoint; c != nil && c.Size == h.Size && c.KeyID == keyID && c.Origin == origin {
		return h.Size, *c, nil
	}
	root, err := rootOf(h.Size, h.Hashes)
	if err != nil {
		return 0, checkpoint.Checkpoint{}, fmt.Errorf("audit head at size %d: %w", h.Size, err)
	}
	cp, err := checkpoint.SignAs(signer, keyID, origin, h.Size, root, now)
	if err != nil {
		return 0, checkpoint.Checkpoint{}, fmt.Errorf("signing the audit checkpoint: %w", err)
	}
	return h.Size, cp, nil
}
