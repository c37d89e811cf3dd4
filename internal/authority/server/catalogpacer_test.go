package server

import (
	"testing"
	"time"
)

// TestCatalogPacer is the attack of a federated peer that changes its
// catalog on every poll (once a second, as the follower paces it): 100
// changes in 100 s publish 5 policy versions (one at once, then one per
// 30 s interval, each the latest change), not 100.
func TestCatalogPacer(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	type timer struct {
		at time.Time
		f  func()
	}
	var timers []timer
	p := newCatalogPacer(30 * time.Second)
	p.now = func() time.Time { return now }
	p.after = func(d time.Duration, f func()) { timers = append(timers, timer{now.Add(d), f}) }
	var published []int
	for i := 1; i <= 100; i++ {
		// fire due timers, then the change of second i
		for len(timers) > 0 && !timers[0].at.After(now) {
			f := timers[0].f
			timers = timers[1:]
			f()
		}
		p.do("b.example", func() { published = append(published, i) })
		now = now.Add(time.Second)
	}
	now = now.Add(time.Minute)
	for _, tm := range timers {
		tm.f()
	}
	if len(published) > 5 || len(published) < 3 {
		t.Fatalf("100 changes published %d versions: %v", len(published), published)
	}
	if published[0] != 1 || published[len(published)-1] != 100 {
		t.Fatalf("the first change is published at once and the last one at the end: %v", published)
	}
	// Another trust domain has its own interval.
	n := 0
	p.do("c.example", func() { n++ })
	if n != 1 {
		t.Fatal("c.example waited for b.example's interval")
	}
}
