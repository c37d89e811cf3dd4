package audit

import (
	"testing"
	"time"
)

// The committer's wait after a commit is one commit time, one more while
// callers keep arriving, at most lingerCommits of them and maxLinger; a
// window in which nobody came closes the group. Fixed times: no clock.
func TestLingerWindowGrowsOnlyWhileCallersArrive(t *testing.T) {
	end := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	at := func(w lingerWindow, d time.Duration) {
		t.Helper()
		if got := w.deadline.Sub(end); got != d {
			t.Fatalf("deadline %v after the commit, want %v", got, d)
		}
	}

	// A 1 ms commit that left 3 events queued.
	w := newLingerWindow(end, ms, 3)
	at(w, ms)
	if w.extend(3) { // nobody came during the first window
		t.Fatal("a window without arrivals was extended")
	}
	at(w, ms)
	if !w.extend(5) {
		t.Fatal("a window with arrivals was not extended")
	}
	at(w, 2*ms)
	if w.extend(5) { // nobody came during the second
		t.Fatal("the second window without arrivals was extended")
	}
	if !w.extend(6) {
		t.Fatal("the second window with an arrival was not extended")
	}
	at(w, lingerCommits*ms)
	if w.extend(60) {
		t.Fatalf("extended past %d commit times", lingerCommits)
	}
	at(w, lingerCommits*ms)

	// maxLinger bounds the whole wait, and the last step is cut to it.
	w = newLingerWindow(end, 2*ms, 0)
	for q := 1; w.extend(q); q++ {
		if q > 10 {
			t.Fatal("the window grows without bound")
		}
	}
	at(w, maxLinger)
	w = newLingerWindow(end, 2*maxLinger, 0)
	at(w, maxLinger)
	if w.extend(10) {
		t.Fatal("a commit longer than maxLinger left room to extend")
	}

	// A commit that took no measurable time leaves no window at all.
	for _, took := range []time.Duration{0, -ms} {
		w = newLingerWindow(end, took, 0)
		at(w, 0)
		if w.extend(10) {
			t.Fatalf("a window after a commit of %v was extended", took)
		}
	}
}

// The count of active callers the committer waits for follows the groups
// up at once, comes down an eighth (at least one) per group, and drops to
// the group's count when a window passed without arrivals: a lone caller,
// once the others left, is committed without waiting.
func TestNextActiveDecaysAndDropsOnAnEmptyWindow(t *testing.T) {
	if got := nextActive(10, 30, false); got != 30 {
		t.Fatalf("after a bigger group: %d, want 30", got)
	}
	if got := nextActive(64, 20, false); got != 56 {
		t.Fatalf("64 then a group of 20: %d, want 56 (an eighth less)", got)
	}
	if got := nextActive(64, 20, true); got != 20 {
		t.Fatalf("after a window without arrivals: %d, want the group's 20", got)
	}
	// From 64 callers down to one: the count reaches one in a bounded
	// number of groups even without an empty window.
	n, groups := 64, 0
	for ; n > 1; groups++ {
		if groups > 64 {
			t.Fatalf("the count is stuck at %d", n)
		}
		next := nextActive(n, 1, false)
		if next >= n {
			t.Fatalf("the count did not come down from %d", n)
		}
		n = next
	}
	if got := nextActive(1, 1, false); got != 1 {
		t.Fatalf("a lone caller waits for %d", got)
	}
}
