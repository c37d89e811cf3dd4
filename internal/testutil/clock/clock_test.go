package clock

import (
	"testing"
	"time"
)

func TestStopped(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := At(start)
	if !c.Now().Equal(start) {
		t.Fatalf("Now = %v, want %v", c.Now(), start)
	}
	c.Advance(time.Hour)
	if want := start.Add(time.Hour); !c.Now().Equal(want) {
		t.Fatalf("after Advance: %v, want %v", c.Now(), want)
	}
	c.Set(start)
	if !c.Now().Equal(start) {
		t.Fatalf("after Set: %v, want %v", c.Now(), start)
	}
}

func TestRunning(t *testing.T) {
	c := Running()
	before := time.Now()
	if now := c.Now(); now.Before(before) {
		t.Fatalf("running clock %v is behind the real time %v", now, before)
	}
	c.Advance(48 * time.Hour)
	if now := c.Now(); now.Before(before.Add(48 * time.Hour)) {
		t.Fatalf("advanced clock %v is not 48h ahead of %v", now, before)
	}
	target := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	c.Set(target)
	if now := c.Now(); now.Before(target) || now.After(target.Add(time.Hour)) {
		t.Fatalf("after Set(%v): %v", target, now)
	}
}
