package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/clock"
)

func limitedRegistry(t *testing.T, lim IssueLimits) (*Registry, *clock.Fake) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	clk := clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	reg, err := New(st, Options{TrustDomain: td, Clock: clk.Now, Limits: lim,
		Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	return reg, clk
}

// TestJWTPerAgentBound runs the attack of an agent minting for each of
// its entries in turn: the per-entry bound never trips, the per-agent one
// (IssueLimits.JWTsPerAgent) does, for every entry, fresh ones included
// (JWTRoom, checked before signing, answers the same); a withheld one
// forgotten and expired ones give room back.
func TestJWTPerAgentBound(t *testing.T) {
	reg, clk := limitedRegistry(t, IssueLimits{JWTsPerEntry: 4, JWTsPerAgent: 10})
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/many-entries")
	minted, n := 0, 0
	for round := range 3 {
		for e := range 8 {
			n++
			err := reg.RecordJWT(ctx, agent, fmt.Sprintf("e%d", e), fmt.Sprintf("%032x", n), clk.Now().Add(5*time.Minute))
			switch {
			case err == nil:
				minted++
			case errs.KindOf(err) != errs.Precondition || !strings.Contains(err.Error(), "identity.max_jwt_svids_per_agent"):
				t.Fatalf("round %d entry %d: %v, want Precondition naming max_jwt_svids_per_agent", round, e, err)
			}
		}
	}
	if minted != 10 {
		t.Fatalf("minted %d across 8 entries, want the agent's bound 10", minted)
	}
	if got, _ := reg.IssuedJWTs(ctx, agent); len(got) != 10 {
		t.Fatalf("%d recorded, want 10", len(got))
	}
	if err := reg.JWTRoom(ctx, agent, "fresh-entry"); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("room for a fresh entry at the agent's bound: %v, want Precondition", err)
	}
	// Another agent is not held by this one's bound.
	if err := reg.RecordJWT(ctx, spiffeid.RequireFromString("spiffe://example.org/ward/agent/other"), "e0", "ff", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, _ := reg.IssuedJWTs(ctx, agent)
	if err := reg.ForgetWithheld(ctx, agent, got[:1]); err != nil {
		t.Fatal(err)
	}
	if err := reg.JWTRoom(ctx, agent, "fresh-entry"); err != nil {
		t.Fatalf("room after one was forgotten: %v", err)
	}
	if err := reg.RecordJWT(ctx, agent, "fresh-entry", "aa", clk.Now().Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := reg.JWTRoom(ctx, agent, "other-entry"); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("at the bound again: %v, want Precondition", err)
	}
	clk.Advance(5*time.Minute + JWTLeeway + time.Second)
	if err := reg.JWTRoom(ctx, agent, "other-entry"); err != nil {
		t.Fatalf("room after they expired: %v", err)
	}
}

// TestJWTEvictionAtAgentBoundFitsFederation: an agent at the default
// per-agent bound (MaxJWTPerAgent), its mints spread over entries at the
// per-entry bound, is evicted; the jtis it revokes, as the deny-list's
// serials published on the federation revocation channel, stay well under
// federation.MaxRevocationUpdate (a third of it).
func TestJWTEvictionAtAgentBoundFitsFederation(t *testing.T) {
	reg, clk := limitedRegistry(t, IssueLimits{})
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/at-bound")
	minted := 0
	for i := 0; ; i++ {
		err := reg.RecordJWT(ctx, agent, fmt.Sprintf("entry-%03d", i/MaxJWTPerEntry), fmt.Sprintf("f%031x", i) /* 128 bits, as a real jti */, clk.Now().Add(5*time.Minute))
		if err != nil {
			if errs.KindOf(err) != errs.Precondition {
				t.Fatal(err)
			}
			break
		}
		minted++
	}
	if minted != MaxJWTPerAgent {
		t.Fatalf("minted %d, want MaxJWTPerAgent %d", minted, MaxJWTPerAgent)
	}
	var revoked []Issued
	if err := reg.evictForTest(ctx, agent, &revoked); err != nil {
		t.Fatal(err)
	}
	var d policy.DenyList
	for _, r := range revoked {
		s, err := policy.NormalizeSerial(r.Serial)
		if err != nil {
			t.Fatal(err)
		}
		d.Serials = append(d.Serials, s)
	}
	if len(d.Serials) != MaxJWTPerAgent {
		t.Fatalf("the eviction revoked %d, want %d", len(d.Serials), MaxJWTPerAgent)
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(federation.Revocations{TrustDomain: td.Name(), Sequence: 1 << 40, DenyList: d}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d jtis: %d bytes on the revocation channel (limit %d)", len(d.Serials), buf.Len(), federation.MaxRevocationUpdate)
	if buf.Len() > federation.MaxRevocationUpdate/3 {
		t.Fatalf("one eviction's jtis take %d bytes of the revocation channel's %d", buf.Len(), federation.MaxRevocationUpdate)
	}
}

// evictForTest evicts agent, keeping what the revocation got.
func (r *Registry) evictForTest(ctx context.Context, agent spiffeid.ID, got *[]Issued) error {
	out, err := r.takeIssued(ctx, agent)
	*got = out
	return err
}
