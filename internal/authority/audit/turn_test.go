package audit

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// Two writers append without pause while a third, allowed only a few lost
// races, appends too: the writers' turn lets it in, every append lands in
// one log that verifies, and no turn is left behind.
func TestWritersTurnLetsALosingWriterIn(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	busy := []*Log{openLog(t, st, key), openLog(t, st, key)}
	late := openLog(t, st, key, WithMaxAttempts(turnAfter+1))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var appended atomic.Int64
	for _, l := range busy {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := l.Append(context.Background(), testEvent(w*100000+i)); err != nil {
						t.Errorf("busy writer: %v", err)
						return
					}
					appended.Add(1)
				}
			}()
		}
	}
	for i := range 50 {
		if _, err := late.Append(context.Background(), testEvent(900000+i)); err != nil {
			t.Fatalf("the third writer was refused: %v", err)
		}
		appended.Add(1)
	}
	close(stop)
	wg.Wait()
	cp := head(t, late)
	if cp.Size != uint64(appended.Load()) {
		t.Fatalf("log holds %d events, %d were appended", cp.Size, appended.Load())
	}
	requireOK(t, verifyLog(t, late, key.Public()))
	if _, err := st.Get(context.Background(), turnKeySuffix); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a turn was left behind: %v", err)
	}
}

// A turn whose holder died is removed once it expired; until then the
// others wait instead of failing.
func TestWritersTurnOfADeadHolderExpires(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	l := openLog(t, st, key, WithClock(func() time.Time { return time.Unix(0, clock.Load()) }))
	v, _ := json.Marshal(turnRecord{Holder: "dead", Until: now.Add(50 * time.Millisecond)})
	if _, err := st.Put(context.Background(), turnKeySuffix, v); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := l.Append(context.Background(), testEvent(1)); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("append went past a live turn: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	clock.Store(now.Add(time.Second).UnixNano()) // the dead holder's turn expired
	if err := <-done; err != nil {
		t.Fatalf("append after the turn expired: %v", err)
	}
	if _, err := st.Get(context.Background(), turnKeySuffix); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the expired turn is still there: %v", err)
	}
}
