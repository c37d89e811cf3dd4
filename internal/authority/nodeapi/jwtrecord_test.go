package nodeapi

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
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

// TestJWTSVIDsPerAgentBoundBeforeSigning runs the attack of an agent
// minting in a loop for each of its entries in turn (so no entry reaches
// its own bound): past identity.max_jwt_svids_per_agent unexpired ones,
// every mint, for any entry, is refused (FailedPrecondition) before
// signing, and the eviction revokes exactly the bound.
func TestJWTSVIDsPerAgentBoundBeforeSigning(t *testing.T) {
	const perEntry, perAgent, entries = 8, 20, 6
	h := newHarnessMounting(t, nil, nil, nil, authoritytest.WithIssueLimits(registry.IssueLimits{JWTsPerEntry: perEntry, JWTsPerAgent: perAgent}))
	agent := h.agentCaller(t)
	ids := []string{agent.entry}
	for i := 1; i < entries; i++ {
		e, err := h.reg.CreateEntry(context.Background(), registry.Entry{SPIFFEID: fmt.Sprintf("spiffe://%s/app/many-%d", testTD.Name(), i),
			ParentID: agent.svid.ID.String(), Selectors: []attest.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", i+1)}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	c := h.client(t, agent.svid)
	ctx := context.Background()
	minted, refused := 0, 0
	var signedAtBound uint64
	for i := range 2 * perAgent {
		if minted == perAgent && signedAtBound == 0 {
			signedAtBound = h.ca.SignedJWTSVIDs()
		}
		_, err := c.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: ids[i%entries], Audience: []string{"orders"}})
		switch {
		case err == nil:
			minted++
		case status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "max_jwt_svids_per_agent"):
			refused++
		default:
			t.Fatalf("mint %d: %v", i, err)
		}
	}
	if minted != perAgent || refused != perAgent {
		t.Fatalf("minted %d, refused %d: want %d each", minted, refused, perAgent)
	}
	if n := h.ca.SignedJWTSVIDs() - signedAtBound; n != 0 {
		t.Fatalf("%d mints past the agent's bound cost %d signatures, want 0", refused, n)
	}
	var jwts int
	if _, _, err := h.reg.EvictAgent(ctx, agent.svid.ID, func(_ context.Context, s []registry.Issued) (int, error) {
		for _, r := range s {
			if r.JWT {
				jwts++
			}
		}
		return len(s), nil
	}); err != nil {
		t.Fatal(err)
	}
	if jwts != perAgent {
		t.Fatalf("the eviction revoked %d JWT-SVIDs, want the agent's bound %d", jwts, perAgent)
	}
}
