package audit

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// CommitStats counts every stored event and every group once, failed
// groups included, and the store's time is part of the commit's.
func TestCommitStatsCountEveryEventAndGroup(t *testing.T) {
	st := memstore.New()
	l := openLog(t, st, newKey(t))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() { appendN(t, l, w*100, 25) })
	}
	wg.Wait()
	s := l.CommitStats()
	if s.Events != 200 || s.Groups != l.Commits() || s.Groups == 0 {
		t.Fatalf("stats count %d events in %d groups; want 200 in %d (the commits)", s.Events, s.Groups, l.Commits())
	}
	if s.Stored > s.Committed || s.Queued < 0 || s.Resumed < 0 || s.Lingered < 0 {
		t.Fatalf("stats %+v: the store's time exceeds the commit's or a sum is negative", s)
	}
	st.SetBatchHook(func([]store.Op) error { return errors.New("disk full") })
	if _, err := l.Append(context.Background(), testEvent(1000)); err == nil {
		t.Fatal("an append the store refused succeeded")
	}
	if s2 := l.CommitStats(); s2.Events != 201 || s2.Groups != s.Groups+1 {
		t.Fatalf("after a failed group: %d events in %d groups, want 201 in %d", s2.Events, s2.Groups, s.Groups+1)
	}
}
