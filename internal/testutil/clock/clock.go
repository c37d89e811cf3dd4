// Package clock is the settable clock tests hand to the clock seams of ward's
// packages (a func() time.Time: ca.Clock, kms.WithClock, registry and Node
// API Clock fields, the agent's now).
package clock

import (
	"sync"
	"time"
)

// Fake is a clock a test moves. A stopped Fake (At) stands still until the
// test sets or advances it; a running one (Running) follows real time plus an
// offset the test moves forward, for code that also waits on real timers.
// It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	at      time.Time     // stopped: the time Now returns
	off     time.Duration // running: added to the real time
	running bool
}

// At returns a stopped clock showing t.
func At(t time.Time) *Fake { return &Fake{at: t} }

// Running returns a clock that shows the real time until advanced.
func Running() *Fake { return &Fake{running: true} }

// Now is the clock's time; pass c.Now where a func() time.Time is wanted.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return time.Now().Add(c.off)
	}
	return c.at
}

// Advance moves the clock forward by d (backward if d is negative).
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = c.at.Add(d)
	c.off += d
}

// Set makes the clock show t (a running clock goes on ticking from t).
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = t
	c.off = time.Until(t)
}
