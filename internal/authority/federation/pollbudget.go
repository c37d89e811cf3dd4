package federation

import (
	"context"
	"time"
)

// A peer's revocation channel is a long-poll: a new revocation comes back
// at once, nothing new after MaxRevocationWait. A peer that answers at
// once every time (compromised, or broken) would make this authority poll
// it in a tight loop and, when each answer changes the deny-list, audit,
// store and publish a policy version to every agent for each. The follower
// therefore polls a peer at most revocationBurst times in a row without
// waiting, then at most once per revocationRefill: a burst of revocations
// still arrives at once, and since every answer carries the peer's whole
// current deny-list, later ones are late by at most revocationRefill.
// revocationRefill stays under the 2 s in which a revocation must reach
// federated clusters (a longer refill made the 6th revoke-and-lift in a
// minute arrive late); a hostile peer then costs at most one policy
// version a second.
const (
	revocationBurst  = 10
	revocationRefill = time.Second
)

// pollBudget is a token bucket of burst polls refilled one per refill
// (zero: revocationBurst and revocationRefill).
type pollBudget struct {
	burst  float64
	refill time.Duration
	tokens float64
	at     time.Time
}

// take spends a poll at now, or returns how long to wait for one.
func (b *pollBudget) take(now time.Time) time.Duration {
	if b.burst == 0 {
		b.burst, b.refill = revocationBurst, revocationRefill
	}
	if b.at.IsZero() {
		b.tokens, b.at = b.burst, now
	}
	if now.After(b.at) {
		b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.at))/float64(b.refill))
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(b.refill))
}

// pause waits d or until ctx ends (c.sleep in tests).
func (c RevocationClient) pause(ctx context.Context, d time.Duration) {
	if c.sleep != nil {
		c.sleep(ctx, d)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
