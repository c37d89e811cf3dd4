package audit

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// Storage layout, under the Log's prefix.
const (
	headKeySuffix  = "audit/head"
	eventKeyPrefix = "audit/e/"
	headVersion    = 1
)

var (
	th      = rfc6962.DefaultHasher
	factory = &compact.RangeFactory{Hash: hashChildren}
)

// The RFC 6962 hashes as rfc6962.DefaultHasher computes them (same bytes:
// SHA-256 of the leaf or node prefix and the data, crypto/sha256), without
// its three allocations per hash: the committer hashes each event's leaf
// into one buffer per group and every merge of the tree costs one 32-byte
// result (TestHashesAreRFC6962s).
var (
	leafPrefix   = []byte{rfc6962.RFC6962LeafHashPrefix}
	leafHashPool = sync.Pool{New: func() any { return sha256.New() }}
)

// appendLeafHash appends the RFC 6962 leaf hash of leaf to dst.
func appendLeafHash(dst, leaf []byte) []byte {
	h := leafHashPool.Get().(hash.Hash)
	h.Reset()
	h.Write(leafPrefix)
	h.Write(leaf)
	dst = h.Sum(dst)
	leafHashPool.Put(h)
	return dst
}

// leafHash is th.HashLeaf with one allocation (its result).
func leafHash(leaf []byte) []byte {
	return appendLeafHash(make([]byte, 0, sha256.Size), leaf)
}

// hashChildren is th.HashChildren with one allocation (its result).
func hashChildren(l, r []byte) []byte {
	if len(l) != sha256.Size || len(r) != sha256.Size {
		return th.HashChildren(l, r)
	}
	var b [1 + 2*sha256.Size]byte
	b[0] = rfc6962.RFC6962NodeHashPrefix
	copy(b[1:], l)
	copy(b[1+sha256.Size:], r)
	sum := sha256.Sum256(b[:])
	return append(make([]byte, 0, sha256.Size), sum[:]...)
}

// headRecord is the value at audit/head: the tree size, the compact range
// of [0, Size) and the latest signed checkpoint (whose size may lag Size
// after an interrupted multi-chunk commit).
type headRecord struct {
	V          int                    `json:"v"`
	Size       uint64                 `json:"size"`
	Hashes     [][]byte               `json:"hashes"`
	Checkpoint *checkpoint.Checkpoint `json:"checkpoint,omitempty"`
}

func encodeHead(h *headRecord) ([]byte, error) {
	h.V = headVersion
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encoding audit head: %w", err)
	}
	return b, nil
}

func decodeHead(b []byte) (*headRecord, error) {
	var h headRecord
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("decoding audit head: %w", err)
	}
	if h.V != headVersion {
		return nil, fmt.Errorf("audit head has version %d: this build reads version %d", h.V, headVersion)
	}
	if want := compact.RangeSize(0, h.Size); len(h.Hashes) != want {
		return nil, fmt.Errorf("audit head at size %d holds %d hashes, want %d", h.Size, len(h.Hashes), want)
	}
	for i, x := range h.Hashes {
		if len(x) != sha256.Size {
			return nil, fmt.Errorf("audit head hash %d is %d bytes, want %d", i, len(x), sha256.Size)
		}
	}
	if h.Checkpoint != nil && h.Checkpoint.Size > h.Size {
		return nil, fmt.Errorf("audit head at size %d holds a checkpoint for size %d", h.Size, h.Checkpoint.Size)
	}
	return &h, nil
}

// rootOf returns the Merkle root of the compact range [0, size).
func rootOf(size uint64, hashes [][]byte) ([]byte, error) {
	if size == 0 {
		return th.EmptyRoot(), nil
	}
	r, err := factory.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	return r.GetRootHash(nil)
}
