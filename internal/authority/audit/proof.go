package audit

import (
	"context"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// Prover computes RFC 6962 consistency proofs between two sizes of a Log
// from its stored records, for verifiers that remember a checkpoint (the
// node agents: they get one with every Sync). Perfect subtrees never change
// in an append-only log, so the hashes of those of 2^memoLevel leaves and
// more are remembered (32 bytes per 128 records): after the first proof,
// a proof from the previous head to the next reads only the new records
// and at most 2^memoLevel older ones per level. The memo is dropped when
// the Log notices its stored history went backwards.
type Prover struct {
	l         *Log
	mu        sync.Mutex
	memo      map[compact.NodeID][]byte
	rollbacks uint64
}

const memoLevel = 8

// NewProver returns a Prover over l.
func NewProver(l *Log) *Prover {
	return &Prover{l: l, memo: map[compact.NodeID][]byte{}}
}

// ConsistencyProof returns the RFC 6962 proof that the tree of oldSize
// records is a prefix of the tree of newSize records (empty when oldSize
// is 0 or equal to newSize).
func (p *Prover) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("no audit consistency proof from size %d to the smaller size %d", oldSize, newSize)
	}
	if oldSize == 0 || oldSize == newSize {
		return [][]byte{}, nil
	}
	if rb := p.l.RollbacksDetected(); rb != p.loadRollbacks() {
		p.mu.Lock()
		p.memo, p.rollbacks = map[compact.NodeID][]byte{}, rb
		p.mu.Unlock()
	}
	nodes, err := proof.Consistency(oldSize, newSize)
	if err != nil {
		return nil, fmt.Errorf("audit consistency proof %d -> %d: %w", oldSize, newSize, err)
	}
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		if hashes[i], err = p.node(ctx, id); err != nil {
			return nil, fmt.Errorf("audit consistency proof %d -> %d: %w", oldSize, newSize, err)
		}
	}
	return nodes.Rehash(hashes, th.HashChildren)
}

func (p *Prover) loadRollbacks() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rollbacks
}

// node is the hash of the perfect subtree id.
func (p *Prover) node(ctx context.Context, id compact.NodeID) ([]byte, error) {
	if id.Level >= memoLevel {
		p.mu.Lock()
		h, ok := p.memo[id]
		p.mu.Unlock()
		if ok {
			return h, nil
		}
	}
	var h []byte
	if id.Level > memoLevel {
		l, err := p.node(ctx, compact.NewNodeID(id.Level-1, id.Index*2))
		if err != nil {
			return nil, err
		}
		r, err := p.node(ctx, compact.NewNodeID(id.Level-1, id.Index*2+1))
		if err != nil {
			return nil, err
		}
		h = th.HashChildren(l, r)
	} else {
		begin, end := id.Coverage()
		rng := factory.NewEmptyRange(begin)
		err := p.l.Read(ctx, begin, end, func(r Record) error {
			if r.Err != nil {
				return r.Err
			}
			if r.Seq != rng.End() {
				return fmt.Errorf("record %d is missing", rng.End())
			}
			return rng.Append(leafHash(r.Leaf), func(n compact.NodeID, nh []byte) {
				if n == id {
					h = nh
				}
			})
		})
		if err != nil {
			return nil, err
		}
		if rng.End() != end {
			return nil, fmt.Errorf("records %d..%d are missing", rng.End(), end-1)
		}
		if h == nil {
			return nil, fmt.Errorf("subtree %d..%d was not hashed", begin, end-1)
		}
	}
	if id.Level >= memoLevel {
		p.mu.Lock()
		p.memo[id] = h
		p.mu.Unlock()
	}
	return h, nil
}
