package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
