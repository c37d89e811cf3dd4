package reconnect

import (
	"testing"
	"time"
)

// TestWatchBackoffBounded: the Workload API watch's retry grows from
// 100 ms and never waits more than MaxDelay; Reset starts over.
func TestWatchBackoffBounded(t *testing.T) {
	b := watchBackoff{}.NewBackoff()
	for i := range 100 {
		if d := b.Next(); d <= 0 || d > MaxDelay || i == 0 && d > 100*time.Millisecond {
			t.Fatalf("attempt %d: delay %s", i, d)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset: %s", d)
	}
	if c := Config(0); c.MaxDelay != 0 || Config(time.Second).MaxDelay != time.Second {
		t.Fatal("Config does not carry its bound")
	}
}
