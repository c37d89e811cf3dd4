package policystore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// eventLog keeps whole events (fields included).
type eventLog struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (l *eventLog) Record(_ context.Context, ev audit.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
	return nil
}

func (l *eventLog) ok(op string) []audit.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Event
	for _, ev := range l.evs {
		if ev.Operation == op && ev.Result == audit.ResultOK {
			out = append(out, ev)
		}
	}
	return out
}

func boltFor(t *testing.T, opts ...boltstore.Option) store.Store {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func files(i int) map[string][]byte {
	return map[string][]byte{"a.cedar": []byte(fmt.Sprintf("@id(\"v%d\")\n%s", i, allowAB[len(`@id("a-to-b")`)+1:]))}
}

// stored is the numbers of the versions in storage, oldest first.
func stored(t *testing.T, s *Store) []uint64 {
	t.Helper()
	vs, _, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]uint64, len(vs))
	for i, v := range vs {
		out[i] = v.Number
	}
	return out
}

func run(from, to uint64) []uint64 {
	var out []uint64
	for n := from; n <= to; n++ {
		out = append(out, n)
	}
	return out
}

// TestRetentionEdges: the store keeps the current version and the keep
// before it; the apply that goes past that deletes the oldest in its own
// batch and its audit event says how many. Edge cases: keep 1, exactly
// keep+1 versions (nothing pruned yet), keep+2 (one pruned), and keep 0 or
// negative (the default, never unlimited).
func TestRetentionEdges(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		keep, applies int
		want          []uint64 // versions stored after the applies
		pruned        []string // pruned_versions of each apply ("" = field absent)
	}{
		{keep: 1, applies: 1, want: run(1, 1), pruned: []string{""}},
		{keep: 1, applies: 2, want: run(1, 2), pruned: []string{"", ""}},
		{keep: 1, applies: 3, want: run(2, 3), pruned: []string{"", "", "1"}},
		{keep: 1, applies: 5, want: run(4, 5), pruned: []string{"", "", "1", "1", "1"}},
		{keep: 3, applies: 4, want: run(1, 4), pruned: []string{"", "", "", ""}},      // exactly keep+1: current and 3 before it
		{keep: 3, applies: 5, want: run(2, 5), pruned: []string{"", "", "", "", "1"}}, // keep+2
		{keep: 3, applies: 3, want: run(1, 3), pruned: []string{"", "", ""}},
		{keep: 0, applies: DefaultKeepVersions + 2, want: run(2, DefaultKeepVersions+2)},
		{keep: -5, applies: DefaultKeepVersions + 1, want: run(1, DefaultKeepVersions+1)},
	} {
		t.Run(fmt.Sprintf("keep=%d/applies=%d", tc.keep, tc.applies), func(t *testing.T) {
			l := &eventLog{}
			s := New(boltFor(t), l, WithKeepVersions(tc.keep))
			for i := 1; i <= tc.applies; i++ {
				if _, err := s.Apply(ctx, "admin", files(i), ""); err != nil {
					t.Fatal(err)
				}
			}
			if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("stored versions %v, want %v", got, tc.want)
			}
			if o, err := s.OldestKept(ctx); err != nil || o != tc.want[0] {
				t.Fatalf("oldest kept %d %v, want %d", o, err, tc.want[0])
			}
			if tc.pruned != nil {
				evs := l.ok("policy.apply")
				for i, want := range tc.pruned {
					if got := evs[i].Fields["pruned_versions"]; got != want {
						t.Fatalf("apply %d audited pruned_versions %q, want %q (%v)", i+1, got, want, evs[i].Fields)
					}
				}
			}
		})
	}
}

// TestRetentionEveryCommitPrunes: revocations, like applies, make
// versions, so they prune too; a refused apply prunes nothing.
func TestRetentionEveryCommitPrunes(t *testing.T) {
	ctx := context.Background()
	l := &eventLog{}
	s := New(boltFor(t), l, WithKeepVersions(2))
	for i := 1; i <= 3; i++ {
		if _, err := s.Apply(ctx, "admin", files(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Revoke(ctx, "admin", []string{"spiffe://td/x"}, nil, false, ""); err != nil {
		t.Fatal(err)
	}
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(2, 4)) {
		t.Fatalf("after a revocation: %v", got)
	}
	if evs := l.ok("policy.revoke"); len(evs) != 1 || evs[0].Fields["pruned_versions"] != "1" {
		t.Fatalf("revoke event: %+v", evs)
	}
	if _, err := s.Apply(ctx, "admin", map[string][]byte{"bad.cedar": []byte("permit(")}, ""); err == nil {
		t.Fatal("bad set applied")
	}
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(2, 4)) {
		t.Fatalf("a refused apply pruned: %v", got)
	}
}

// TestRollbackToAPrunedVersion: refused, NotFound, naming the oldest
// version kept and what to do; nothing is stored or pruned.
func TestRollbackToAPrunedVersion(t *testing.T) {
	ctx := context.Background()
	s := New(boltFor(t), &eventLog{}, WithKeepVersions(2))
	for i := 1; i <= 6; i++ {
		if _, err := s.Apply(ctx, "admin", files(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Rollback(ctx, "admin", 2, "")
	if errs.KindOf(err) != errs.NotFound {
		t.Fatalf("rollback to a pruned version: %v", err)
	}
	for _, want := range []string{"version 2 was pruned", "oldest version still kept is 4", "from 4 to 6", "policy.keep_versions", "nothing was changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(4, 6)) {
		t.Fatalf("a refused rollback changed the history: %v", got)
	}
	// a version never made is not called pruned
	if _, err := s.Get(ctx, 99); err == nil || strings.Contains(err.Error(), "pruned") {
		t.Fatalf("get 99: %v", err)
	}
	v, err := s.Rollback(ctx, "admin", 4, "")
	if err != nil || v.Number != 7 || v.RestoredFrom != 4 {
		t.Fatalf("rollback to the oldest kept: %+v %v", v, err)
	}
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(5, 7)) {
		t.Fatalf("after the rollback: %v", got)
	}
}

// TestRetentionBacklogLongerThanABatch: a history far longer than the
// retention (an upgrade from a build that never pruned, a restored backup,
// a lowered keep_versions) and than one store batch holds is pruned by the
// next commit: the part that fits in its batch, then the rest in further
// batches, oldest first, so what is stored is always an unbroken run.
func TestRetentionBacklogLongerThanABatch(t *testing.T) {
	ctx := context.Background()
	st := boltFor(t, boltstore.WithMaxBatch(8))
	big := New(st, &eventLog{}, WithKeepVersions(100))
	for i := 1; i <= 40; i++ {
		if _, err := big.Apply(ctx, "admin", files(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	l := &eventLog{}
	small := New(st, l, WithKeepVersions(3))
	if _, err := small.Apply(ctx, "admin", files(41), ""); err != nil {
		t.Fatal(err)
	}
	if got := stored(t, small); fmt.Sprint(got) != fmt.Sprint(run(38, 41)) {
		t.Fatalf("after the backlog: %v", got)
	}
	if evs := l.ok("policy.apply"); len(evs) != 1 || evs[0].Fields["pruned_versions"] != "37" || evs[0].Fields["keep_versions"] != "3" {
		t.Fatalf("apply event: %+v", evs)
	}
}

// TestRetentionConcurrentWriters: two stores over one storage (two
// authorities) committing at once prune consistently: every version is
// numbered once, the history is one unbroken run of keep+1 ending at the
// current version, and the pruned counts add up.
func TestRetentionConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	st := boltFor(t)
	l := &eventLog{}
	a, b := New(st, l, WithKeepVersions(4)), New(st, l, WithKeepVersions(4))
	var wg sync.WaitGroup
	for w, s := range []*Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				if _, err := s.Apply(ctx, "admin", files(100*w+i), ""); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := stored(t, a); fmt.Sprint(got) != fmt.Sprint(run(26, 30)) {
		t.Fatalf("after concurrent applies: %v", got)
	}
	total := 0
	for _, ev := range l.ok("policy.apply") {
		var n int
		fmt.Sscan(ev.Fields["pruned_versions"], &n)
		total += n
	}
	if total != 25 {
		t.Fatalf("audited %d pruned versions, want 25", total)
	}
}

// racyStore runs hook once, just before the first read of a version key
// after arm: another authority's commits landing between a reader's read
// of the head and its read of the version the head named.
type racyStore struct {
	store.Store
	armed bool
	hook  func()
}

func (r *racyStore) Get(ctx context.Context, key string) (store.KV, error) {
	if r.armed && strings.HasPrefix(key, "policy/v/") {
		r.armed = false
		r.hook()
	}
	return r.Store.Get(ctx, key)
}

// TestCurrentPrunedWhileRead: with keep_versions 1, two commits of another
// authority between this one's read of the head and of the current
// version prune that version. An apply reads the head again and stores
// its version on top; a read of the current version (Get 0, what Watch
// sends) returns the new current one; neither fails.
func TestCurrentPrunedWhileRead(t *testing.T) {
	ctx := context.Background()
	st := boltFor(t)
	other := New(st, &eventLog{}, WithKeepVersions(1))
	r := &racyStore{Store: st, hook: func() {
		for i := range 2 {
			if _, err := other.Apply(ctx, "other", files(100+i), ""); err != nil {
				t.Error(err)
			}
		}
	}}
	s := New(r, &eventLog{}, WithKeepVersions(1))
	if _, err := s.Apply(ctx, "admin", files(1), ""); err != nil {
		t.Fatal(err)
	}
	r.armed = true
	v, err := s.Apply(ctx, "admin", files(2), "")
	if err != nil || v.Number != 4 {
		t.Fatalf("apply racing two pruning commits: %+v %v", v, err)
	}
	r.armed = true
	if v, err = s.Get(ctx, 0); err != nil || v.Number != 6 {
		t.Fatalf("current version read racing two pruning commits: %+v %v", v, err)
	}
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(5, 6)) {
		t.Fatalf("stored: %v", got)
	}
}
