package audit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// TestReusedPendingsNeverCrossCallers attacks the pooled pendings: callers
// that give up at any moment (before, during or after the commit), commits
// that fail now and then, and callers that reuse a pending at once. Every
// caller told its event is stored finds its own event (its request id) at
// the sequence number it was given, none told "not stored" finds its event
// in the log, and no sequence number is given twice. Run it with -race.
func TestReusedPendingsNeverCrossCallers(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(7)) // chunked groups too
	key := newKey(t)
	l := openLog(t, st, key)
	var batches atomic.Int64
	st.SetBatchHook(func([]store.Op) error {
		n := batches.Add(1)
		if n%13 == 0 {
			return errors.New("injected store failure")
		}
		if n%3 == 0 {
			time.Sleep(time.Duration(n%5) * 100 * time.Microsecond)
		}
		return nil
	})
	const workers, per = 16, 60
	var (
		mu       sync.Mutex
		stored   = map[uint64]string{} // seq -> request id its caller was told
		notStore = map[string]bool{}   // request ids told "not stored"
	)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				n := w*per + i
				ev := testEvent(n)
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				switch n % 4 {
				case 1:
					ctx, cancel = context.WithCancel(context.Background())
					cancel() // gives up at once
				case 2:
					ctx, cancel = context.WithTimeout(context.Background(), time.Duration(n%7)*50*time.Microsecond)
				}
				seq, err := l.Append(ctx, ev)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					if prev, dup := stored[seq]; dup {
						t.Errorf("seq %d given to %s and %s", seq, prev, ev.RequestID)
					}
					stored[seq] = ev.RequestID
				case strings.Contains(err.Error(), "not stored") && errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), "not stored"):
					notStore[ev.RequestID] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	size := l.Size()
	for _, r := range readAll(t, l, 0, size) {
		ev, err := DecodeEvent(r.Leaf)
		if err != nil {
			t.Fatal(err)
		}
		if want, ok := stored[r.Seq]; ok && ev.RequestID != want {
			t.Fatalf("seq %d holds %s, but its caller %s was told it is there", r.Seq, ev.RequestID, want)
		}
		if notStore[ev.RequestID] {
			t.Fatalf("seq %d holds %s, whose caller was told it was not stored", r.Seq, ev.RequestID)
		}
	}
	if len(stored) == 0 || len(notStore) == 0 {
		t.Fatalf("the attack did not run: %d stored, %d refused as not stored", len(stored), len(notStore))
	}
	requireOK(t, verifyLog(t, l, key.Public()))
}
