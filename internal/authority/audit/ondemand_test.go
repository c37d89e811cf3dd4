package audit

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// served collects every checkpoint handed out, to check they all verify and
// are consistent with each other.
type servedSet struct {
	mu  sync.Mutex
	cps []checkpoint.Checkpoint
}

func (s *servedSet) add(cp checkpoint.Checkpoint) {
	s.mu.Lock()
	s.cps = append(s.cps, cp)
	s.mu.Unlock()
}

// check verifies every checkpoint and that each one extends the previous
// (RFC 6962 consistency proofs from the log), same size same root.
func (s *servedSet) check(t *testing.T, l *Log, key *countingSigner) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	slices.SortFunc(s.cps, func(a, b checkpoint.Checkpoint) int { return int(a.Size) - int(b.Size) })
	p := NewProver(l)
	for i, cp := range s.cps {
		if err := checkpoint.Verify(cp, key.Public()); err != nil {
			t.Fatalf("served checkpoint at size %d does not verify: %v", cp.Size, err)
		}
		if i == 0 {
			continue
		}
		prev := s.cps[i-1]
		if prev.Size == cp.Size {
			if string(prev.RootHash) != string(cp.RootHash) {
				t.Fatalf("two served checkpoints at size %d with different roots", cp.Size)
			}
			continue
		}
		pf, err := p.ConsistencyProof(context.Background(), prev.Size, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, prev.Size, cp.Size, pf, prev.RootHash, cp.RootHash); err != nil {
			t.Fatalf("served checkpoint at size %d does not extend the one at size %d: %v", cp.Size, prev.Size, err)
		}
	}
}

// appendWhile runs appenders (8 × n events) and returns when they are done.
func appendWhile(t *testing.T, l *Log, n int, during func(stop <-chan struct{})) {
	t.Helper()
	stop := make(chan struct{})
	var followers sync.WaitGroup
	followers.Go(func() { during(stop) })
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Go(func() {
			for i := range n {
				if _, err := l.Append(context.Background(), testEvent(c*1000+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	followers.Wait()
}

// The attack: agents' Sync and federated witnesses (Latest) ask for the
// checkpoint in a loop while the log moves, some claiming to know the very
// head so as to force a fresh signature. However many ask, the authority
// signs at most once per checkpoint interval on their behalf; every answer
// verifies, is consistent with every other, and is never smaller than what
// the caller said it knows (or the caller is told to ask again).
func TestLatestCallersCannotMakeTheLogSign(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(16))
	key := &countingSigner{Signer: newKey(t)}
	l := openLog(t, st, key, WithCheckpointInterval(time.Hour))
	var set servedSet
	var calls, behind atomic.Int64
	appendWhile(t, l, 25, func(stop <-chan struct{}) {
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Go(func() {
				var known uint64
				for {
					select {
					case <-stop:
						return
					default:
					}
					atLeast := known
					if g%4 == 0 { // the attacker claims to know the head
						atLeast, _ = l.StoredSize(context.Background())
					}
					calls.Add(1)
					cp, err := l.Latest(context.Background(), atLeast)
					if errors.Is(err, ErrCheckpointBehind) {
						behind.Add(1)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					if cp.Size < atLeast {
						t.Errorf("Latest(%d) served size %d", atLeast, cp.Size)
						return
					}
					known = cp.Size
					set.add(cp)
				}
			})
		}
		wg.Wait()
	})
	// One scheduled signature (the first commit) and one on demand.
	if n := key.n.Load(); n > 2 || l.OnDemandSignatures() > 1 {
		t.Fatalf("%d Latest calls over %d commits made %d signatures (%d on demand), want at most 2 (1)", calls.Load(), l.Commits(), n, l.OnDemandSignatures())
	}
	t.Logf("%d Latest calls (%d told to ask again), %d commits, %d signatures", calls.Load(), behind.Load(), l.Commits(), key.n.Load())
	set.check(t, l, key)
}

// Callers that need coverage (Head: inclusion proofs, verify, backups)
// asking concurrently share one signature in flight: at most one per
// stored head however many ask, each covering the head stored when it was
// asked, all consistent.
func TestHeadCallersShareSignatures(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(16))
	key := &countingSigner{Signer: newKey(t)}
	l := openLog(t, st, key, WithCheckpointInterval(time.Hour))
	var set servedSet
	var calls atomic.Int64
	appendWhile(t, l, 25, func(stop <-chan struct{}) {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					before, err := l.StoredSize(context.Background())
					if err != nil {
						t.Error(err)
						return
					}
					calls.Add(1)
					cp, err := l.Head(context.Background())
					if err != nil {
						t.Error(err)
						return
					}
					if cp.Size < before {
						t.Errorf("Head served size %d, the stored head was at %d before it was asked", cp.Size, before)
						return
					}
					set.add(cp)
				}
			})
		}
		wg.Wait()
	})
	heads := l.Commits() + 1 // every stored head, the empty one included
	if n := l.OnDemandSignatures(); n > heads {
		t.Fatalf("%d Head calls made %d signatures on demand over %d stored heads, want at most one per head", calls.Load(), n, heads)
	}
	t.Logf("%d Head calls, %d commits, %d signatures on demand", calls.Load(), l.Commits(), l.OnDemandSignatures())
	set.check(t, l, key)
}

// Latest lags the stored head by at most the interval: a checkpoint older
// than that is replaced by one signed for the full head, which then serves
// for an interval; one ahead of the clock is not fresh.
func TestLatestLagsAtMostTheInterval(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(16))
	key := &countingSigner{Signer: newKey(t)}
	var mu sync.Mutex
	now := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	l := openLog(t, st, key, WithCheckpointInterval(10*time.Second), WithClock(clock))
	ctx := context.Background()
	appendN(t, l, 0, 5) // the first commit signed; the stored checkpoint is for size 1
	if cp, err := l.Latest(ctx, 0); err != nil || cp.Size != 1 {
		t.Fatalf("Latest within the interval: size %d, %v; want the stored checkpoint (1)", cp.Size, err)
	}
	if cp, err := l.Latest(ctx, 100); err != nil || cp.Size != 5 {
		t.Fatalf("Latest(100) over a head of 5: size %d, %v; want 5 (one on-demand signature)", cp.Size, err)
	}
	appendN(t, l, 5, 2)
	if _, err := l.Latest(ctx, 7); !errors.Is(err, ErrCheckpointBehind) {
		t.Fatalf("Latest(7) with the interval's budget spent: %v, want ErrCheckpointBehind", err)
	}
	if cp, err := l.Latest(ctx, 3); err != nil || cp.Size != 5 {
		t.Fatalf("Latest(3): size %d, %v; want 5", cp.Size, err)
	}
	advance(11 * time.Second)
	if cp, err := l.Latest(ctx, 0); err != nil || cp.Size != 7 {
		t.Fatalf("Latest past the interval: size %d, %v; want a checkpoint for the full head (7)", cp.Size, err)
	}
	if got := key.n.Load(); got != 3 {
		t.Fatalf("%d signatures, want 3 (first commit, two on demand)", got)
	}
	// Head still covers the head at once.
	appendN(t, l, 7, 1)
	if cp := head(t, l); cp.Size != 8 {
		t.Fatalf("Head at size %d, want 8", cp.Size)
	}
}

// A caller that knows more of the log than its stored head holds (the head
// was rolled back, for instance to an older copy of the store) gets a
// checkpoint smaller than what it knows even when the interval's on-demand
// signature is spent, so a witness sees the rollback at once: refusing
// ("ask again later") would hide it for as long as other callers keep
// spending the interval's signature.
func TestLatestShowsARollbackWithTheBudgetSpent(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(16))
	key := &countingSigner{Signer: newKey(t)}
	now := time.Date(2026, 12, 7, 21, 0, 0, 0, time.UTC)
	l := openLog(t, st, key, WithCheckpointInterval(10*time.Second), WithClock(func() time.Time { return now }))
	ctx := context.Background()
	appendN(t, l, 0, 5)
	old, err := st.Get(ctx, headKeySuffix)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5, 5)
	known, err := l.Latest(ctx, 10) // spends the interval's signature
	if err != nil || known.Size != 10 {
		t.Fatalf("Latest(10) over a head of 10: size %d, %v", known.Size, err)
	}
	if _, err := st.Put(ctx, headKeySuffix, old.Value); err != nil { // the rollback
		t.Fatal(err)
	}
	cp, err := l.Latest(ctx, known.Size)
	if err != nil {
		t.Fatalf("Latest(%d) over a rolled-back head of 5 with the budget spent: %v, want a smaller checkpoint", known.Size, err)
	}
	if cp.Size >= known.Size {
		t.Fatalf("Latest(%d) over a rolled-back head served size %d", known.Size, cp.Size)
	}
	if err := checkpoint.Verify(cp, key.Public()); err != nil {
		t.Fatalf("served checkpoint does not verify: %v", err)
	}
}
