package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/errs"
)

// TestIssuedBoundedAgainstASigningLoop runs the attack of a compromised
// agent asking for SVIDs in a loop: what the authority keeps per agent
// never holds more than MaxIssuedPerEntry unexpired SVIDs per entry
// (entries x rotations within the TTL); beyond that signings are refused
// (so never released unrecorded), and expired ones leave the record.
func TestIssuedBoundedAgainstASigningLoop(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/loop")
	const entries, ttl = 3, time.Hour
	serial := 0
	next := func(entry string) Issued {
		serial++
		return Issued{Entry: entry, Serial: fmt.Sprintf("%x", serial), NotAfter: f.clk.Now().Add(ttl)}
	}
	refused := 0
	for i := range 200 {
		items := make([]Issued, 0, entries+1)
		for e := range entries {
			items = append(items, next(fmt.Sprintf("entry-%d", e)))
		}
		items = append(items, next(AgentSelf))
		perItem, err := f.reg.RecordIssued(ctx, agent, items, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range perItem {
			if e != nil {
				if errs.KindOf(e) != errs.Precondition {
					t.Fatalf("refusal of a signing beyond the bound: %v", e)
				}
				refused++
			}
		}
		got, err := f.reg.IssuedSVIDs(ctx, agent)
		if err != nil {
			t.Fatal(err)
		}
		if max := (entries + 1) * MaxIssuedPerEntry; len(got) > max {
			t.Fatalf("round %d: %d SVIDs recorded, more than %d", i, len(got), max)
		}
		f.advance(time.Minute) // 200 rounds: past the TTL of the first ones
	}
	if refused == 0 {
		t.Fatal("a signing loop was never refused")
	}
	// Expired SVIDs leave the record.
	f.advance(ttl)
	if got, _ := f.reg.IssuedSVIDs(ctx, agent); len(got) != 0 {
		t.Fatalf("%d SVIDs kept after every one expired", len(got))
	}
	if perItem, err := f.reg.RecordIssued(ctx, agent, []Issued{next("entry-0")}, false); err != nil || perItem[0] != nil {
		t.Fatalf("a signing once the old ones expired: %v %v", err, perItem)
	}
}

// TestEvictTakesIssued: eviction hands every unexpired SVID to revoke in
// its audited step, then no signing in flight is recorded (so none is
// released) until the agent attests again.
func TestEvictTakesIssued(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/n1")
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a1", f.clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	now := f.clk.Now()
	if _, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: AgentSelf, Serial: "a1", NotAfter: now.Add(time.Hour)},
		{Entry: "e1", Serial: "b1", NotAfter: now.Add(time.Minute)}, {Entry: "e1", Serial: "b2", NotAfter: now.Add(time.Hour)}}, true); err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Minute) // b1 expired: not revoked, nothing to refuse
	var got []Issued
	fail := true
	revoke := func(_ context.Context, s []Issued) (int, error) {
		got = s
		if fail {
			return 0, errs.New(errs.Unavailable, "store down")
		}
		return len(s), nil
	}
	if _, _, err := f.reg.EvictAgent(ctx, id, revoke); err == nil || len(got) != 2 {
		t.Fatalf("evict with the revocation failing: %v, %v", err, got)
	}
	fail = false
	_, n, err := f.reg.EvictAgent(ctx, id, revoke)
	if err != nil || n != 2 || len(got) != 2 || got[0].Serial != "a1" || got[1].Serial != "b2" {
		t.Fatalf("evict again: %d %v %v", n, got, err)
	}
	if left, _ := f.reg.IssuedSVIDs(ctx, id); len(left) != 0 {
		t.Fatalf("revoked SVIDs kept: %v", left)
	}
	var audited bool
	for _, ev := range f.events {
		audited = audited || ev.Operation == "agent.evict" && ev.Result == "ok" && ev.Fields["revoked_svids"] == "2"
	}
	if !audited {
		t.Fatal("agent.evict not audited with its count")
	}
	// A signing in flight at the eviction is refused, never released.
	if _, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: "e1", Serial: "b3", NotAfter: now.Add(time.Hour)}}, false); errs.KindOf(err) != errs.Denied {
		t.Fatalf("signing for an evicted agent: %v", err)
	}
	// Attesting again lifts it.
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a2", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if perItem, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: AgentSelf, Serial: "a2", NotAfter: now.Add(time.Hour)}}, true); err != nil || perItem[0] != nil {
		t.Fatalf("after attesting again: %v %v", err, perItem)
	}
}

// TestEvictDuringAttest runs an eviction between an attestation's record
// (RecordAttestation, which lifts an earlier eviction) and the record of
// its SVID (RecordIssued, attested): the eviction has taken the record
// without that SVID, so the SVID must be refused, never released
// unrevoked; and one in flight after the agent is marked but before the
// record is taken is revoked with the rest.
func TestEvictDuringAttest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/race")
	now := f.clk.Now()
	var revoked []Issued
	revoke := func(_ context.Context, s []Issued) (int, error) { revoked = append(revoked, s...); return len(s), nil }
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a1", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.reg.EvictAgent(ctx, id, revoke); err != nil {
		t.Fatal(err)
	}
	_, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: AgentSelf, Serial: "a1", NotAfter: now.Add(time.Hour)}}, true)
	if errs.KindOf(err) != errs.Denied {
		t.Fatalf("an attestation's SVID recorded after an eviction took the record: %v (revoked %v)", err, revoked)
	}
	// Attesting again, not evicted in between: recorded; a later eviction
	// revokes it.
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a2", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if perItem, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: AgentSelf, Serial: "a2", NotAfter: now.Add(time.Hour)}}, true); err != nil || perItem[0] != nil {
		t.Fatalf("attesting again: %v %v", err, perItem)
	}
	if _, n, err := f.reg.EvictAgent(ctx, id, revoke); err != nil || n != 1 || revoked[len(revoked)-1].Serial != "a2" {
		t.Fatalf("evicting the re-attested agent: %d %v %v", n, revoked, err)
	}
}
