package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/errs"
)

// TestConcurrentRecordsOfOneAgentAllSucceed: many signing calls of one
// agent at once (a node starting hundreds of workloads; its own renewal
// beside them) each record, none gives up with Conflict: the calls of one
// agent do not compare-and-swap against each other (one record write per
// agent at a time on an authority), however many there are. Every one is
// in the record afterwards, and an eviction takes them all.
func TestConcurrentRecordsOfOneAgentAllSucceed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/busy")
	const callers, perCaller, entries = 32, 4, 64
	var wg sync.WaitGroup
	errc := make(chan error, 4*callers*perCaller)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perCaller {
				// Two entries per call, each shared with other callers:
				// every call writes the head and records others write
				// too (4 SVIDs per entry in all, within its bound).
				e1, e2 := (c*perCaller+i)%entries, (c*perCaller+i+1)%entries
				items := []Issued{
					{Entry: fmt.Sprintf("e%d", e1), Serial: fmt.Sprintf("%02x%02xa", c, i), NotAfter: f.clk.Now().Add(time.Hour)},
					{Entry: fmt.Sprintf("e%d", e2), Serial: fmt.Sprintf("%02x%02xb", c, i), NotAfter: f.clk.Now().Add(time.Hour)},
				}
				perItem, err := f.reg.RecordIssued(ctx, agent, items, false)
				if err != nil {
					errc <- fmt.Errorf("caller %d call %d: %w", c, i, err)
					continue
				}
				for j, e := range perItem {
					if e != nil {
						errc <- fmt.Errorf("caller %d call %d item %d: %w", c, i, j, e)
					}
				}
			}
		}()
	}
	// The agent's own SVID renewing meanwhile, and records forgotten.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range perCaller * 2 {
			it := Issued{Entry: AgentSelf, Serial: fmt.Sprintf("self%d", i), NotAfter: f.clk.Now().Add(time.Hour)}
			if perItem, err := f.reg.RecordIssued(ctx, agent, []Issued{it}, false); err != nil || perItem[0] != nil {
				errc <- fmt.Errorf("own SVID %d: %v %v", i, err, perItem)
			}
			if err := f.reg.ForgetWithheld(ctx, agent, []Issued{it}); err != nil {
				errc <- fmt.Errorf("forget %d: %w", i, err)
			}
		}
	}()
	wg.Wait()
	close(errc)
	n := 0
	for err := range errc {
		if n++; n <= 5 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of %d calls of one agent at once failed", n, callers*perCaller*2)
	}
	live, err := f.reg.IssuedSVIDs(ctx, agent)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != callers*perCaller*2 {
		t.Fatalf("recorded %d SVIDs, want %d", len(live), callers*perCaller*2)
	}
}

// TestManyAgentsStripedLockRedTeam (red team, -race): more agents than
// the striped lock has stripes (so agents share stripes), each signing,
// minting JWT-SVIDs, forgetting and reading its records at once while a
// third of them are evicted meanwhile, and every eviction's revoke
// calling back into the registry for another agent, which may share its
// stripe (a revoke run under the stripe's lock would deadlock there).
// Nothing deadlocks (the test's timeout), nothing fails but what must (an
// evicted agent's later writes, Denied), and each eviction takes exactly
// what its agent had recorded before it.
func TestManyAgentsStripedLockRedTeam(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	n := 2*len(f.reg.issuedMu) + 8
	agents := make([]spiffeid.ID, n)
	for i := range agents {
		a, err := f.reg.RecordAttestation(ctx, spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/ward/agent/n%d", i)), AttestJoinToken, nil, fmt.Sprintf("s%d", i), f.clk.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		agents[i] = spiffeid.RequireFromString(a.SPIFFEID)
	}
	exp := f.clk.Now().Add(time.Hour)
	var wg sync.WaitGroup
	errc := make(chan error, 16*n)
	taken := make([][]Issued, n)
	for i, agent := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 3 {
				it := Issued{Entry: fmt.Sprintf("e%d", k), Serial: fmt.Sprintf("%04x%02xc", i, k), NotAfter: exp}
				if perItem, err := f.reg.RecordIssued(ctx, agent, []Issued{it}, false); err != nil || perItem[0] != nil {
					errc <- fmt.Errorf("agent %d sign %d: %v %v", i, k, err, perItem)
				}
				if err := f.reg.RecordJWT(ctx, agent, fmt.Sprintf("e%d", k), fmt.Sprintf("%04x%02xd", i, k), exp); err != nil {
					errc <- fmt.Errorf("agent %d mint %d: %w", i, k, err)
				}
			}
			withheld := Issued{Entry: "e9", Serial: fmt.Sprintf("%04xff", i), NotAfter: exp}
			if _, err := f.reg.RecordIssued(ctx, agent, []Issued{withheld}, false); err != nil {
				errc <- err
			}
			if err := f.reg.ForgetWithheld(ctx, agent, []Issued{withheld}); err != nil {
				errc <- err
			}
			if _, err := f.reg.IssuedJWTs(ctx, agent); err != nil {
				errc <- err
			}
			if i%3 != 0 {
				return
			}
			other := agents[(i+len(f.reg.issuedMu))%n] // often on the same stripe
			_, _, err := f.reg.EvictAgent(ctx, agent, func(ctx context.Context, s []Issued) (int, error) {
				taken[i] = s
				if _, err := f.reg.IssuedJWTs(ctx, other); err != nil {
					return 0, err
				}
				if _, err := f.reg.IssuedSVIDs(ctx, other); err != nil {
					return 0, err
				}
				return len(s), nil
			})
			if err != nil {
				errc <- fmt.Errorf("evict %d: %w", i, err)
				return
			}
			if err := f.reg.RecordJWT(ctx, agent, "e0", fmt.Sprintf("%04xee", i), exp); errs.KindOf(err) != errs.Denied {
				errc <- fmt.Errorf("agent %d minted after its eviction: %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for i := 0; i < n; i += 3 {
		if len(taken[i]) != 6 || CountJWT(taken[i]) != 3 {
			t.Errorf("eviction of agent %d took %v, want its 3 X509-SVIDs and 3 JWT-SVIDs", i, taken[i])
		}
	}
}
