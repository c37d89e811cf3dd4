package nodeapi

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
)

// TestJWTSVIDsRecordedBoundedAndRevokedOnEvict: every JWT-SVID minted
// through an agent is recorded under it (its jti, also in the audit
// event) before it is released, and forgotten when it is withheld; an agent minting in a loop is refused
// past registry.MaxJWTPerEntry unexpired ones for an entry, before any
// signing, and the record stays at that bound; evicting the agent hands all of them to
// the revocation, and the evicted agent mints no more.
func TestJWTSVIDsRecordedBoundedAndRevokedOnEvict(t *testing.T) {
	h := newHarness(t)
	agent := h.agentCaller(t)
	c := h.client(t, agent.svid)
	ctx := context.Background()
	// Withheld while the audit log is down: never released, so not
	// recorded either (it would hold the entry's bound).
	h.auditDown.Store(true)
	if _, err := c.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: agent.entry, Audience: []string{"orders"}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("mint with the audit log down: %v, want Unavailable", err)
	}
	h.auditDown.Store(false)
	if got, _ := h.reg.IssuedJWTs(ctx, agent.svid.ID); len(got) != 0 {
		t.Fatalf("a withheld JWT-SVID stayed recorded: %v", got)
	}
	minted := map[string]bool{}
	var signedAtBound uint64
	for i := range registry.MaxJWTPerEntry + 20 {
		if i == registry.MaxJWTPerEntry {
			signedAtBound = h.ca.SignedJWTSVIDs()
		}
		resp, err := c.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: agent.entry, Audience: []string{"orders"}})
		if i >= registry.MaxJWTPerEntry {
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("mint %d past the bound: %v, want FailedPrecondition", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("mint %d: %v", i, err)
		}
		parts := strings.Split(resp.Token, ".")
		if len(parts) != 3 {
			t.Fatalf("token %q", resp.Token)
		}
		minted[resp.Token] = true
	}
	if n := h.ca.SignedJWTSVIDs() - signedAtBound; n != 0 {
		t.Fatalf("20 mints past the bound cost %d signatures, want 0 (refused before signing)", n)
	}
	recorded, err := h.reg.IssuedJWTs(ctx, agent.svid.ID)
	if err != nil || len(recorded) != registry.MaxJWTPerEntry {
		t.Fatalf("%d JWT-SVIDs recorded, want %d: %v", len(recorded), registry.MaxJWTPerEntry, err)
	}
	jtis := map[string]bool{}
	for _, ev := range h.auth.Events("svid.jwt.sign") {
		if ev.Result == "ok" {
			jtis[ev.Fields["jti"]] = true
		}
	}
	for _, r := range recorded {
		if !r.JWT || !jtis[r.Serial] {
			t.Fatalf("recorded %+v is not a minted JWT-SVID's jti (audited: %d)", r, len(jtis))
		}
	}
	var revoked []registry.Issued
	if _, _, err := h.reg.EvictAgent(ctx, agent.svid.ID, func(_ context.Context, s []registry.Issued) (int, error) {
		revoked = s
		return len(s), nil
	}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range revoked {
		if r.JWT && jtis[r.Serial] {
			n++
		}
	}
	if n != registry.MaxJWTPerEntry {
		t.Fatalf("the eviction revoked %d JWT-SVIDs, want %d", n, registry.MaxJWTPerEntry)
	}
	if _, err := c.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: agent.entry, Audience: []string{"orders"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mint through the evicted agent: %v, want PermissionDenied", err)
	}
}
