package ca

import (
	"context"
	"time"
)

// Run keeps the CA current until ctx ends: it runs Tick every interval
// (0 means a fifth of RefreshHint) and reloads at once when another
// authority writes the state, if the store supports Watch. Errors (a store
// that is briefly unreachable) go to onError, which may be nil; Run keeps
// going and returns nil when ctx ends.
func (c *CA) Run(ctx context.Context, interval time.Duration, onError func(error)) error {
	return c.run(ctx, interval, onError, c.Tick)
}

// Follow keeps the CA's view current without ever rotating: it reloads
// every interval (0 means a fifth of RefreshHint) and at once when another
// authority writes the state. Authorities that share a store and are not
// the elected leader run Follow; the leader runs Run.
func (c *CA) Follow(ctx context.Context, interval time.Duration, onError func(error)) error {
	return c.run(ctx, interval, onError, func(ctx context.Context, _ time.Time) error { return c.Reload(ctx) })
}

func (c *CA) run(ctx context.Context, interval time.Duration, onError func(error), tick func(context.Context, time.Time) error) error {
	if interval <= 0 {
		interval = c.cfg.RefreshHint / 5
	}
	report := func(err error) {
		if err != nil && onError != nil && ctx.Err() == nil {
			onError(err)
		}
	}
	watch := func() <-chan struct{} {
		ch, err := c.st.Watch(ctx, c.key)
		if err != nil {
			return nil // backend without Watch: Tick's reload polls instead
		}
		out := make(chan struct{}, 1)
		go func() {
			defer close(out)
			for range ch {
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}()
		return out
	}
	events := watch()
	t := time.NewTicker(interval)
	defer t.Stop()
	report(tick(ctx, c.clock()))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			report(tick(ctx, c.clock()))
		case _, ok := <-events:
			report(c.Reload(ctx))
			if !ok { // watch dropped: re-list (reload) and re-watch
				events = watch()
			}
		}
	}
}
