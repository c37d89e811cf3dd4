package policystore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
)

// flood makes n versions the way callers with little or no privilege
// do: an agent's displacements (RevokeExpiring by the agent) and a
// federated trust domain's revocations changing (RefreshRemote).
func flood(t *testing.T, s *Store, remote *policy.DenyList, mu *sync.Mutex, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		var err error
		if i%2 == 0 {
			_, err = s.RevokeExpiring(ctx, "spiffe://example.org/ward/agent/rogue",
				[]Expiring{{Serial: fmt.Sprintf("%x", 0x1000+i), NotAfter: time.Now().Add(time.Hour)}}, "displaced")
		} else {
			mu.Lock()
			remote.Serials = []string{fmt.Sprintf("%x", 0x2000+i)}
			mu.Unlock()
			_, err = s.RefreshRemote(ctx, "system:federation/peer.example", nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPrunedAppliesStayPinnedRedTeam (red team): a compromised agent (32
// displacements an hour by default, each a version) or a federated peer
// flipping its revocations makes versions as fast as it may; once they
// outnumber policy.keep_versions, every version an operator applied would
// be pruned and nothing left to roll back to. The newest applies and
// rollbacks (min(keep, MaxPinnedVersions)) stay pinned: rollback, show
// (Get) of them work, while the flood's own versions are pruned as
// before, and the pins are bounded: older applies are unpinned as new
// ones come.
func TestPrunedAppliesStayPinnedRedTeam(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	remote := policy.DenyList{}
	st := boltFor(t)
	s := New(st, &eventLog{}, WithKeepVersions(3), WithRemoteDenyLists(func() map[string]policy.DenyList {
		mu.Lock()
		defer mu.Unlock()
		return map[string]policy.DenyList{"peer.example": {Serials: append([]string(nil), remote.Serials...)}}
	}))
	for i := 1; i <= 4; i++ { // versions 1-4; with keep 3, pinned: the last 3 applies (2, 3, 4)
		if _, err := s.Apply(ctx, "admin", files(i), fmt.Sprintf("apply %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	flood(t, s, &remote, &mu, 40) // versions 5-44
	if got := stored(t, s); fmt.Sprint(got) != fmt.Sprint(run(41, 44)) {
		t.Fatalf("stored after the flood: %v", got)
	}
	for _, n := range []uint64{2, 3, 4} {
		v, err := s.Get(ctx, n)
		if err != nil || v.Number != n || v.Comment != fmt.Sprintf("apply %d", n) || string(v.Bundle.Files["a.cedar"]) != string(files(int(n))["a.cedar"]) {
			t.Fatalf("pinned apply %d after the flood: %+v %v", n, v.Number, err)
		}
	}
	_, err := s.Get(ctx, 1) // the 4th newest apply: beyond keep
	if errs.KindOf(err) != errs.NotFound || !strings.Contains(err.Error(), "pinned") || !strings.Contains(err.Error(), "2 3 4") {
		t.Fatalf("get 1: %v, want NotFound naming the pinned 2 3 4", err)
	}
	if _, err := s.Get(ctx, 20); errs.KindOf(err) != errs.NotFound { // the flood's own: pruned
		t.Fatalf("get 20: %v", err)
	}
	v, err := s.Rollback(ctx, "admin", 2, "back to 2 after the flood")
	if err != nil || v.RestoredFrom != 2 || string(v.Bundle.Files["a.cedar"]) != string(files(2)["a.cedar"]) {
		t.Fatalf("rollback to a pinned apply: %+v %v", v, err)
	}
	// The rollback (version 45) changed the files: now pinned are 3, 4
	// and it; 2 was unpinned in its batch.
	flood(t, s, &remote, &mu, 10)
	if _, err := s.Get(ctx, 2); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("get 2 after 3 newer applies: %v, want unpinned", err)
	}
	for _, n := range []uint64{3, 4, 45} {
		if _, err := s.Get(ctx, n); err != nil {
			t.Fatalf("get %d: %v", n, err)
		}
	}
	kvs, err := st.List(ctx, pinnedPrefix)
	if err != nil || len(kvs) != 3 {
		t.Fatalf("%d pinned versions stored (%v), want 3", len(kvs), err)
	}
}

// TestPinnedBoundedAndConcurrent: two authorities over one store, each
// applying and flooding at once: the pins stay bounded by
// min(keep, MaxPinnedVersions), are among the newest applies, older
// than the kept run, and every one reads back.
func TestPinnedBoundedAndConcurrent(t *testing.T) {
	ctx := context.Background()
	st := boltFor(t, boltstore.WithMaxBatch(16))
	a, b := New(st, &eventLog{}, WithKeepVersions(2)), New(st, &eventLog{}, WithKeepVersions(2))
	if _, err := a.Apply(ctx, "admin", files(0), ""); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w, s := range []*Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 12 {
				var err error
				if i%3 == 0 {
					_, err = s.Apply(ctx, "admin", files(100*(w+1)+i), "")
				} else {
					_, err = s.RevokeExpiring(ctx, "spiffe://example.org/ward/agent/a", []Expiring{{Serial: fmt.Sprintf("%x%02x", w+1, i), NotAfter: time.Now().Add(time.Hour)}}, "")
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r, _, err := a.readRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := st.List(ctx, pinnedPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Applies) != 2 || len(kvs) != len(r.Pinned) || len(r.Pinned) > 2 {
		t.Fatalf("retention %+v with %d pinned stored, want at most 2 and the newest 2 applies", r, len(kvs))
	}
	for _, n := range r.Pinned {
		if n >= r.Oldest {
			t.Fatalf("version %d pinned but still in the kept run from %d", n, r.Oldest)
		}
		if v, err := a.Get(ctx, n); err != nil || v.Number != n {
			t.Fatalf("pinned %d: %v", n, err)
		}
	}
}
