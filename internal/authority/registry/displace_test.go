package registry

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// denyList is a deny-list as the policy store keeps one: serials until
// DenyListSkew past their NotAfter, pruned when a version is written.
type denyList struct {
	clk     *clock.Fake
	serials map[string]time.Time
	fail    bool
}

func (d *denyList) displace(_ context.Context, svids []Issued) error {
	if d.fail {
		return errs.New(errs.Unavailable, "policy store down")
	}
	now := d.clk.Now()
	for s, na := range d.serials {
		if !na.Add(DenyListSkew).After(now) {
			delete(d.serials, s)
		}
	}
	for _, s := range svids {
		d.serials[s.Serial] = s.NotAfter
	}
	return nil
}

// TestDisplacingLoopStaysBounded runs the attack of an agent asking for
// SVIDs in a loop once entries displace their oldest SVIDs instead of
// refusing: over six lifetimes of the SVIDs, what the record keeps stays
// within MaxIssuedPerEntry per entry, the deny-list within
// MaxDisplacedPerEntry per entry, the displacements (policy versions)
// within MaxDisplacementsPerAgent an hour, signings beyond are refused, and
// every unexpired SVID ever recorded is either in the record (an eviction
// revokes it) or on the deny-list.
func TestDisplacingLoopStaysBounded(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/looper")
	dl := &denyList{clk: f.clk, serials: map[string]time.Time{}}
	const entries, ttl = 3, time.Hour
	names := []string{AgentSelf, "entry-1", "entry-2"}
	serial := 0
	all := map[string]Issued{}
	ok, refused, displaced := 0, 0, 0
	var calls []time.Time
	displace := func(ctx context.Context, s []Issued) error {
		calls = append(calls, f.clk.Now())
		return dl.displace(ctx, s)
	}
	for round := range 300 {
		items := make([]Issued, 0, entries)
		for _, e := range names {
			serial++
			items = append(items, Issued{Entry: e, Serial: fmt.Sprintf("%x", serial), NotAfter: f.clk.Now().Add(ttl)})
		}
		perItem, out, err := f.reg.RecordIssuedDisplacing(ctx, agent, items, false, displace)
		if err != nil {
			t.Fatal(err)
		}
		displaced += len(out)
		for i, e := range perItem {
			switch {
			case e == nil:
				ok++
				all[items[i].Serial] = items[i]
			case errs.KindOf(e) == errs.Precondition:
				refused++
			default:
				t.Fatalf("round %d: %v", round, e)
			}
		}
		live, err := f.reg.IssuedSVIDs(ctx, agent)
		if err != nil {
			t.Fatal(err)
		}
		if len(live) > entries*MaxIssuedPerEntry {
			t.Fatalf("round %d: %d SVIDs in the record, more than %d", round, len(live), entries*MaxIssuedPerEntry)
		}
		if len(dl.serials) > entries*MaxDisplacedPerEntry {
			t.Fatalf("round %d: %d serials on the deny-list, more than %d", round, len(dl.serials), entries*MaxDisplacedPerEntry)
		}
		now := f.clk.Now()
		for s, it := range all {
			if !it.NotAfter.After(now) {
				delete(all, s)
				continue
			}
			_, denied := dl.serials[s]
			if !denied && !slices.ContainsFunc(live, func(x Issued) bool { return x.Serial == s }) {
				t.Fatalf("round %d: SVID %s (entry %s) is unexpired, neither recorded nor deny-listed: an eviction would miss it", round, s, it.Entry)
			}
		}
		f.advance(ttl / 50) // 300 rounds: six lifetimes
	}
	for i, c := range calls {
		n := 0
		for _, d := range calls[i:] {
			if d.Before(c.Add(DisplaceWindow)) {
				n++
			}
		}
		if n > MaxDisplacementsPerAgent {
			t.Fatalf("%d displacements (policy versions) within %s from %s", n, DisplaceWindow, c)
		}
	}
	// Per entry and lifetime (plus the skew), at most 8 + 16 signings.
	if max := entries * (MaxIssuedPerEntry + MaxDisplacedPerEntry) * 7; ok > max || refused == 0 || displaced == 0 {
		t.Fatalf("%d recorded (at most %d), %d refused, %d displaced", ok, max, refused, displaced)
	}
}

// TestCrashLoopDisplacesTheOldest: an honest agent restarting ten times
// within its SVIDs' lifetime gets an SVID each time; the oldest beyond
// the bound are the ones displaced, and a failing deny-list refuses the
// signing that needed room (the others are recorded).
func TestCrashLoopDisplacesTheOldest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/crashy")
	dl := &denyList{clk: f.clk, serials: map[string]time.Time{}}
	var got []Issued
	for i := range 10 {
		it := Issued{Entry: "web", Serial: fmt.Sprintf("r%d", i), NotAfter: f.clk.Now().Add(time.Hour)}
		perItem, _, err := f.reg.RecordIssuedDisplacing(ctx, agent, []Issued{it}, false, dl.displace)
		if err != nil || perItem[0] != nil {
			t.Fatalf("restart %d: %v %v", i, err, perItem)
		}
		got = append(got, it)
		f.advance(time.Minute)
	}
	if _, ok := dl.serials["r0"]; !ok || len(dl.serials) != 2 || dl.serials["r1"].IsZero() {
		t.Fatalf("deny-list %v: want the two oldest (r0, r1)", dl.serials)
	}
	dl.fail = true
	perItem, _, err := f.reg.RecordIssuedDisplacing(ctx, agent, []Issued{{Entry: "web", Serial: "r10", NotAfter: f.clk.Now().Add(time.Hour)},
		{Entry: "api", Serial: "a0", NotAfter: f.clk.Now().Add(time.Hour)}}, false, dl.displace)
	if err != nil || errs.KindOf(perItem[0]) != errs.Unavailable || perItem[1] != nil {
		t.Fatalf("with the deny-list down: %v %v", err, perItem)
	}
	live, _ := f.reg.IssuedSVIDs(ctx, agent)
	if len(live) != MaxIssuedPerEntry+1 || slices.ContainsFunc(live, func(x Issued) bool { return x.Serial == "r10" }) {
		t.Fatalf("record after a failed displacement: %v", live)
	}
	// Without a deny-list the bound refuses, as before.
	if perItem, err := f.reg.RecordIssued(ctx, agent, []Issued{{Entry: "web", Serial: "r11", NotAfter: f.clk.Now().Add(time.Hour)}}, false); err != nil || errs.KindOf(perItem[0]) != errs.Precondition {
		t.Fatalf("at the bound without a deny-list: %v %v", err, perItem)
	}
	if room, err := f.reg.IssueRoom(ctx, agent, []string{"web", "api", "web"}, false, false); err != nil || room[0] == nil || room[1] != nil {
		t.Fatalf("IssueRoom without displacing: %v %v", err, room)
	}
	if room, err := f.reg.IssueRoom(ctx, agent, []string{"web"}, false, true); err != nil || room[0] != nil {
		t.Fatalf("IssueRoom displacing: %v %v", err, room)
	}
}

// TestFailedEvictKeepsAgentOut: an eviction whose revocation failed leaves
// the agent evicted and pending: it may not attest again (its old SVIDs
// would stay valid beside the new ones) until an eviction completes, which
// revokes them.
func TestFailedEvictKeepsAgentOut(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/n2")
	now := f.clk.Now()
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a1", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: AgentSelf, Serial: "a1", NotAfter: now.Add(time.Hour)},
		{Entry: "e1", Serial: "w1", NotAfter: now.Add(time.Hour)}}, true); err != nil {
		t.Fatal(err)
	}
	var revoked []Issued
	fail := true
	revoke := func(_ context.Context, s []Issued) (int, error) {
		if fail {
			return 0, errors.New("audit log down: policy.revoke refused")
		}
		revoked = append(revoked, s...)
		return len(s), nil
	}
	if _, _, err := f.reg.EvictAgent(ctx, id, revoke); err == nil {
		t.Fatal("evict with the revocation failing succeeded")
	}
	a, err := f.reg.GetAgent(ctx, id)
	if err != nil || !a.Evicted || !a.EvictPending {
		t.Fatalf("after a failed evict: %+v %v", a, err)
	}
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a2", now.Add(time.Hour)); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("attesting again while the eviction is pending: %v", err)
	}
	fail = false
	if _, n, err := f.reg.EvictAgent(ctx, id, revoke); err != nil || n != 2 {
		t.Fatalf("evict again: %d %v", n, err)
	}
	if !slices.ContainsFunc(revoked, func(x Issued) bool { return x.Serial == "w1" }) {
		t.Fatalf("the workload SVID was not revoked: %v", revoked)
	}
	if a, _ := f.reg.GetAgent(ctx, id); a.EvictPending {
		t.Fatal("still pending after a complete eviction")
	}
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a2", now.Add(time.Hour)); err != nil {
		t.Fatalf("attesting after the eviction completed: %v", err)
	}
}

// TestIssuedInChunks: with a store taking few operations per batch (etcd
// takes 128), a batch of SVIDs is recorded a few entries at a time, and an
// eviction takes every one.
func TestIssuedInChunks(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "r.db"), boltstore.WithMaxBatch(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	clk := clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	reg, err := New(st, Options{TrustDomain: td, Clock: clk.Now, Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/rack1/node-7")
	near := spiffeid.RequireFromString("spiffe://example.org/ward/agent/rack1/node-70")
	var items []Issued
	for i := range 10 {
		items = append(items, Issued{Entry: fmt.Sprintf("e%02d", i), Serial: fmt.Sprintf("s%d", i), NotAfter: clk.Now().Add(time.Hour)})
	}
	if perItem, err := reg.RecordIssued(ctx, id, items, false); err != nil || slices.ContainsFunc(perItem, func(e error) bool { return e != nil }) {
		t.Fatalf("%v %v", err, perItem)
	}
	if _, err := reg.RecordIssued(ctx, near, []Issued{{Entry: "e00", Serial: "other", NotAfter: clk.Now().Add(time.Hour)}}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "s0", clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var revoked []Issued
	if _, n, err := reg.EvictAgent(ctx, id, func(_ context.Context, s []Issued) (int, error) { revoked = s; return len(s), nil }); err != nil || n != 10 {
		t.Fatalf("evict: %d %v (%v)", n, err, revoked)
	}
	if slices.ContainsFunc(revoked, func(x Issued) bool { return x.Serial == "other" }) {
		t.Fatal("the eviction took another agent's SVID (an agent path that extends this one)")
	}
	if left, _ := reg.IssuedSVIDs(ctx, near); len(left) != 1 {
		t.Fatalf("the other agent's record: %v", left)
	}
}

// TestEvictTakesTheOneRecordForm: SVIDs recorded in the one-record form
// (before the per-entry records) are revoked by an eviction, never
// counted against a bound, and forgotten once revoked.
func TestEvictTakesTheOneRecordForm(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/old-form")
	na := f.clk.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if _, err := f.st.Put(ctx, issuedPrefix+"old-form", []byte(`{"svids":[{"e":"agent","s":"a1","x":"`+na+`"},{"e":"e1","s":"w1","x":"`+na+`"}]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "a1", f.clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if perItem, err := f.reg.RecordIssued(ctx, id, []Issued{{Entry: "e1", Serial: "w2", NotAfter: f.clk.Now().Add(time.Hour)}}, false); err != nil || perItem[0] != nil {
		t.Fatalf("%v %v", err, perItem)
	}
	var revoked []string
	if _, n, err := f.reg.EvictAgent(ctx, id, func(_ context.Context, s []Issued) (int, error) {
		for _, x := range s {
			revoked = append(revoked, x.Serial)
		}
		return len(s), nil
	}); err != nil || n != 3 {
		t.Fatalf("evict: %d %v", n, err)
	}
	slices.Sort(revoked)
	if !slices.Equal(revoked, []string{"a1", "w1", "w2"}) {
		t.Fatalf("revoked %v", revoked)
	}
	if left, _ := f.reg.IssuedSVIDs(ctx, id); len(left) != 0 {
		t.Fatalf("kept after the eviction: %v", left)
	}
}

// TestDisplacementsPerAgentBounded runs the attack of an agent whose
// entries are all at their bound, asking for one entry per call in turn:
// each call would displace (a policy version, kept), so an agent with
// many entries could make entries x MaxDisplacedPerEntry versions per
// lifetime. At most MaxDisplacementsPerAgent are made within
// DisplaceWindow; the rest are refused (also by IssueRoom, so unsigned)
// until the window moves on.
func TestDisplacementsPerAgentBounded(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/stagger")
	dl := &denyList{clk: f.clk, serials: map[string]time.Time{}}
	calls := 0
	displace := func(ctx context.Context, s []Issued) error { calls++; return dl.displace(ctx, s) }
	const entries = 40
	serial := 0
	item := func(e int) Issued {
		serial++
		return Issued{Entry: fmt.Sprintf("e%d", e), Serial: fmt.Sprintf("%x", serial), NotAfter: f.clk.Now().Add(3 * time.Hour)}
	}
	for range MaxIssuedPerEntry {
		var items []Issued
		for e := range entries {
			items = append(items, item(e))
		}
		if _, _, err := f.reg.RecordIssuedDisplacing(ctx, agent, items, false, displace); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 0 {
		t.Fatalf("%d displacements while filling up to the bound", calls)
	}
	for window := range 2 {
		ok := 0
		for i := range 80 {
			it := item(i % entries)
			if room, err := f.reg.IssueRoom(ctx, agent, []string{it.Entry}, false, true); err != nil {
				t.Fatal(err)
			} else if ok >= MaxDisplacementsPerAgent && errs.KindOf(room[0]) != errs.Precondition {
				t.Fatalf("IssueRoom with the displacements used up: %v", room[0])
			}
			perItem, _, err := f.reg.RecordIssuedDisplacing(ctx, agent, []Issued{it}, false, displace)
			if err != nil {
				t.Fatal(err)
			}
			if perItem[0] == nil {
				ok++
			} else if errs.KindOf(perItem[0]) != errs.Precondition {
				t.Fatal(perItem[0])
			}
		}
		if ok != MaxDisplacementsPerAgent || calls != (window+1)*MaxDisplacementsPerAgent {
			t.Fatalf("window %d: %d signings recorded, %d displacements; want %d", window, ok, calls, MaxDisplacementsPerAgent)
		}
		f.advance(DisplaceWindow)
	}
}

// TestConcurrentDisplacementsStayCounted (attack): the displacement (a
// policy version) is made inside the record's compare-and-swap, so an
// agent sending many SignX509SVIDs at once, all at their bound, had every
// call displace (a version each) while only the call whose write won was
// counted: the rest retried on the moved head and displaced again, and
// MaxDisplacementsPerAgent bounded the counted ones only. However many
// calls run at once, an agent makes at most MaxDisplacementsPerAgent
// displacements within the window, and a retry never displaces the same
// SVIDs twice.
func TestConcurrentDisplacementsStayCounted(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/burst")
	dl := &denyList{clk: f.clk, serials: map[string]time.Time{}}
	var mu sync.Mutex
	calls, twice := 0, 0
	seen := map[string]bool{}
	displace := func(ctx context.Context, s []Issued) error {
		// Slow, like a policy commit with its audit event: the other
		// calls read the same head meanwhile.
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		calls++
		for _, sv := range s {
			if seen[sv.Serial] {
				twice++
			}
			seen[sv.Serial] = true
		}
		return dl.displace(ctx, s)
	}
	const entries, callers, perCaller = 16, 16, 6
	var serial atomic.Int64
	item := func(e int) Issued {
		return Issued{Entry: fmt.Sprintf("e%d", e), Serial: fmt.Sprintf("%x", serial.Add(1)), NotAfter: f.clk.Now().Add(3 * time.Hour)}
	}
	for range MaxIssuedPerEntry {
		var items []Issued
		for e := range entries {
			items = append(items, item(e))
		}
		if _, _, err := f.reg.RecordIssuedDisplacing(ctx, agent, items, false, displace); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perCaller {
				// Errors (the bound, contention) are refusals: what is
				// checked is what was displaced.
				_, _, _ = f.reg.RecordIssuedDisplacing(ctx, agent, []Issued{item((c + i) % entries)}, false, displace)
			}
		}()
	}
	wg.Wait()
	if calls > MaxDisplacementsPerAgent || twice > 0 {
		t.Fatalf("%d concurrent calls at the bound made %d displacements (policy versions; at most %d within %s), %d SVIDs displaced twice",
			callers*perCaller, calls, MaxDisplacementsPerAgent, DisplaceWindow, twice)
	}
}
