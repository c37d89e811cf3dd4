package ca

import (
	"context"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// waitFor blocks until cond holds, re-checking on every CA update.
func waitFor(t *testing.T, ctx context.Context, c *CA, what string, cond func() bool) {
	t.Helper()
	for {
		ch := c.Updated()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// TestRunFollowsScheduleAndPeers: Run rotates on schedule, and a second
// authority running on the same store picks up the change through Watch.
func TestRunFollowsScheduleAndPeers(t *testing.T) {
	for _, watchable := range []bool{true, false} {
		name := "poll"
		if watchable {
			name = "watch"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			clk := clock.At(start)
			var opts []memstore.Option
			if !watchable {
				opts = append(opts, memstore.WithoutWatch())
			}
			st := memstore.New(opts...)
			a := newCA(t, st, Config{}, clk.Now)
			if err := a.Init(ctx); err != nil {
				t.Fatal(err)
			}
			b := newCA(t, st, Config{}, clk.Now)
			first := activeID(a, KindIntermediate)

			// b only watches (a long interval); a ticks often.
			runCtx, stop := context.WithCancel(ctx)
			defer stop()
			errs := make(chan error, 16)
			interval := time.Hour
			if !watchable {
				interval = time.Millisecond
			}
			go func() { _ = b.Run(runCtx, interval, func(err error) { errs <- err }) }()
			go func() { _ = a.Run(runCtx, time.Millisecond, func(err error) { errs <- err }) }()

			inter, _ := a.ActiveIntermediate()
			clk.Set(inter.NotAfter.Add(-27 * time.Hour)) // past the activation point
			waitFor(t, ctx, a, "scheduled rotation", func() bool { return activeID(a, KindIntermediate) != first })
			waitFor(t, ctx, b, "peer reload", func() bool { return activeID(b, KindIntermediate) == activeID(a, KindIntermediate) })
			stop()
			select {
			case err := <-errs:
				t.Fatalf("Run reported: %v", err)
			default:
			}
		})
	}
}
