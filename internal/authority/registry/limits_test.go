package registry

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// TestIssueLimitsConfigurable: each per-agent bound of Options.Limits is
// the one enforced (zero: the default), for X509-SVIDs per entry,
// displaced per entry, displacements per agent and JWT-SVIDs per entry.
func TestIssueLimitsConfigurable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lim    IssueLimits
		svids  int // unexpired X509-SVIDs an entry holds before displacing
		placed int // X509-SVIDs one entry gets in all (held + displaced), one entry, calls of one
		jwts   int
	}{
		{"defaults", IssueLimits{}, MaxIssuedPerEntry, MaxIssuedPerEntry + MaxDisplacedPerEntry, MaxJWTPerEntry},
		{"small", IssueLimits{SVIDsPerEntry: 3, DisplacedPerEntry: 2, DisplacementsPerAgent: 100, JWTsPerEntry: 2}, 3, 5, 2},
		{"displacements bound", IssueLimits{SVIDsPerEntry: 3, DisplacedPerEntry: 50, DisplacementsPerAgent: 1, JWTsPerEntry: 4}, 3, 4, 4},
		{"large", IssueLimits{SVIDsPerEntry: 20, DisplacedPerEntry: 30, DisplacementsPerAgent: 100, JWTsPerEntry: 100}, 20, 50, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := boltstore.Open(filepath.Join(t.TempDir(), "r.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			clk := clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			reg, err := New(st, Options{TrustDomain: td, Clock: clk.Now, Limits: tc.lim,
				Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/limits")
			displace := func(context.Context, []Issued) error { return nil }
			placed := 0
			for i := range tc.placed + 5 {
				perItem, _, err := reg.RecordIssuedDisplacing(ctx, agent, []Issued{{Entry: "e", Serial: fmt.Sprintf("s%d", i), NotAfter: clk.Now().Add(time.Hour)}}, false, displace)
				if err != nil {
					t.Fatal(err)
				}
				if perItem[0] == nil {
					placed++
				} else if errs.KindOf(perItem[0]) != errs.Precondition {
					t.Fatalf("signing %d: %v, want Precondition", i, perItem[0])
				}
			}
			live, _ := reg.IssuedSVIDs(ctx, agent)
			if placed != tc.placed || len(live) != tc.svids {
				t.Fatalf("placed %d (want %d), %d held (want %d)", placed, tc.placed, len(live), tc.svids)
			}
			minted := 0
			for i := range tc.jwts + 5 {
				if err := reg.RecordJWT(ctx, agent, "e", fmt.Sprintf("%032x", i), clk.Now().Add(5*time.Minute)); err == nil {
					minted++
				} else if errs.KindOf(err) != errs.Precondition {
					t.Fatal(err)
				}
			}
			if minted != tc.jwts {
				t.Fatalf("minted %d JWT-SVIDs, want %d", minted, tc.jwts)
			}
		})
	}
}
