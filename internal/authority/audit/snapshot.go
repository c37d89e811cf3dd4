package audit

import (
	"strconv"
	"strings"

	"github.com/wardproject/ward/internal/shared/checkpoint"
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
func LeafHash(leaf []byte) []byte { return th.HashLeaf(leaf) }
