package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

func auditLogOf(t *testing.T, key *ecdsa.PrivateKey, n int) *authoritytest.AuditLog {
	return authoritytest.NewAuditLog(t, key, "ward/node.example.org").Append(t, 0, n)
}

// TestSyncCarriesAuditCheckpoint: Sync returns the signed head, its key and
// a consistency proof from the agent's known size that verifies; after the
// log was replaced by an older copy there is nothing to prove (the agent
// sees the smaller size); a proof that cannot be built leaves the audit
// fields out rather than sending an unprovable head.
func TestSyncCarriesAuditCheckpoint(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	src := &authoritytest.AuditSource{}
	l := auditLogOf(t, key, 300)
	src.Set(l)
	h := newHarnessWith(t, func(c *Config) { c.AuditLog = src })
	ctx := context.Background()
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	node := h.client(t, agent)
	first, err := node.Sync(ctx, &wardv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cp1, err := checkpoint.Parse(first.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := checkpoint.ParsePublicKeyPEM(first.AuditPublicKeyPem)
	if err != nil || checkpoint.Verify(cp1, pub) != nil || len(first.AuditConsistencyProof) != 0 {
		t.Fatalf("first sync: %v proof %d", err, len(first.AuditConsistencyProof))
	}
	// Registry events of the attestation may not reach this log; grow it.
	l.Append(t, 300, 5)
	next, err := node.Sync(ctx, &wardv1.SyncRequest{AuditTreeSize: cp1.Size})
	if err != nil {
		t.Fatal(err)
	}
	cp2, _ := checkpoint.Parse(next.AuditCheckpoint)
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cp1.Size, cp2.Size, next.AuditConsistencyProof, cp1.RootHash, cp2.RootHash); err != nil || cp2.Size != cp1.Size+5 {
		t.Fatalf("proof %d -> %d: %v", cp1.Size, cp2.Size, err)
	}
	src.Set(auditLogOf(t, key, 100)) // an older copy
	back, err := node.Sync(ctx, &wardv1.SyncRequest{AuditTreeSize: cp2.Size})
	if err != nil {
		t.Fatal(err)
	}
	if cp, _ := checkpoint.Parse(back.AuditCheckpoint); cp.Size != 100 || len(back.AuditConsistencyProof) != 0 {
		t.Fatalf("after the rollback: size %d, proof %d", cp.Size, len(back.AuditConsistencyProof))
	}
	src.Broken.Store(true)
	none, err := node.Sync(ctx, &wardv1.SyncRequest{AuditTreeSize: 50})
	if err != nil || len(none.AuditCheckpoint) != 0 {
		t.Fatalf("unprovable head: %v checkpoint %d bytes", err, len(none.AuditCheckpoint))
	}
	if len(none.BundleSpiffeJson) == 0 {
		t.Fatal("Sync without the audit part lost the bundle")
	}
}
