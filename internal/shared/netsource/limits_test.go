package netsource

import "testing"

func TestLimits(t *testing.T) {
	l := NewLimits(3, 2)
	// Two pending: the third is refused as pending.
	for i := 0; i < 2; i++ {
		if r := l.Acquire("a"); r != Accepted {
			t.Fatalf("acquire %d: %d", i, r)
		}
	}
	if r := l.Acquire("a"); r != OverPending {
		t.Fatalf("third pending connection: %d", r)
	}
	// Another source is not affected.
	if r := l.Acquire("b"); r != Accepted {
		t.Fatal("source b refused because of a")
	}
	// Pending phases done: one more fits (3 open), then OverOpen.
	l.EndPending("a")
	l.EndPending("a")
	if r := l.Acquire("a"); r != Accepted {
		t.Fatal("third connection refused after the pending phases ended")
	}
	l.EndPending("a")
	if r := l.Acquire("a"); r != OverOpen {
		t.Fatalf("fourth open connection: %d", r)
	}
	for i := 0; i < 3; i++ {
		l.Release("a")
	}
	l.EndPending("b")
	l.Release("b")
	if len(l.m) != 0 {
		t.Fatalf("counts left after every release: %v", l.m)
	}
	// Releasing more than acquired does not go negative.
	l.Release("a")
	l.EndPending("a")
	if r := l.Acquire("a"); r != Accepted {
		t.Fatal("acquire after stray releases")
	}
	if l.m["a"].open != 1 || l.m["a"].pending != 1 {
		t.Fatalf("counts %+v", *l.m["a"])
	}
}
