package audit

import (
	"context"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// TestProverConsistency: proofs between every pair of sizes of a log that
// crosses the memo level verify against the signed heads, and a proof
// checked against another root fails.
func TestProverConsistency(t *testing.T) {
	l := openLog(t, memstore.New(memstore.WithMaxBatch(128)), newKey(t))
	p := NewProver(l)
	ctx := context.Background()
	var heads []checkpoint.Checkpoint
	for _, n := range []int{1, 2, 5, 250, 7, 300, 1} {
		appendN(t, l, int(l.Size()), n)
		heads = append(heads, head(t, l))
	}
	for i, a := range heads {
		for _, b := range heads[i:] {
			pr, err := p.ConsistencyProof(ctx, a.Size, b.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(rfc6962.DefaultHasher, a.Size, b.Size, pr, a.RootHash, b.RootHash); err != nil {
				t.Fatalf("%d -> %d: %v", a.Size, b.Size, err)
			}
			if a.Size != b.Size && a.Size > 0 {
				bad := append([]byte{}, b.RootHash...)
				bad[0] ^= 1
				if proof.VerifyConsistency(rfc6962.DefaultHasher, a.Size, b.Size, pr, a.RootHash, bad) == nil {
					t.Fatalf("%d -> %d verifies against a wrong root", a.Size, b.Size)
				}
			}
		}
	}
	if _, err := p.ConsistencyProof(ctx, 10, 5); err == nil {
		t.Fatal("proof to a smaller size")
	}
}
