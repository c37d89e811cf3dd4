package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (c *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.Signer.Sign(r, d, o)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const testOrigin = "ward/test.example"

func openLog(t testing.TB, st store.Store, signer crypto.Signer, opts ...Option) *Log {
	t.Helper()
	l, err := Open(context.Background(), st, signer, testOrigin, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func testEvent(i int) Event {
	return Event{
		RequestID: fmt.Sprintf("req-%d", i), Actor: "spiffe://test.example/app", Operation: "kms.encrypt",
		Key: "payments", KeyVersion: 3, Result: ResultOK, Fields: map[string]string{"ctx.tenant": "hmac-sha256:00", "bytes": "42"},
	}
}

func appendN(t testing.TB, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := l.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

func readAll(t testing.TB, l *Log, from, to uint64) []Record {
	t.Helper()
	var out []Record
	if err := l.Read(context.Background(), from, to, func(r Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatalf("Read(%d, %d): %v", from, to, err)
	}
	return out
}

func verifyRecords(recs []Record, opts VerifyOptions) Report {
	v := NewVerifier(opts)
	for _, r := range recs {
		v.Add(r)
	}
	return v.Finish()
}

func head(t testing.TB, l *Log) checkpoint.Checkpoint {
	t.Helper()
	cp, err := l.Head(context.Background())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return cp
}

// verifyLog reads the whole log and verifies it against its head.
func verifyLog(t testing.TB, l *Log, pub crypto.PublicKey) Report {
	t.Helper()
	cp := head(t, l)
	rep := verifyRecords(readAll(t, l, 0, cp.Size), VerifyOptions{Head: cp, PublicKey: pub, Origin: testOrigin})
	return rep
}

func requireOK(t testing.TB, rep Report) {
	t.Helper()
	if !rep.OK() {
		t.Fatalf("verification failed: %+v", rep)
	}
}

func TestAppendReadVerifyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxBatch int
		n        int
	}{
		{"empty", 1024, 0},
		{"one", 1024, 1},
		{"several", 1024, 7},
		{"etcd-sized batches", 128, 300},
		{"one-event batches (event, head, turn)", 3, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := memstore.New(memstore.WithMaxBatch(tc.maxBatch))
			key := newKey(t)
			l := openLog(t, st, key)
			appendN(t, l, 0, tc.n)
			if got := l.Size(); got != uint64(tc.n) {
				t.Fatalf("Size = %d, want %d", got, tc.n)
			}
			recs := readAll(t, l, 0, uint64(tc.n)+10) // clamped to the size
			if len(recs) != tc.n {
				t.Fatalf("read %d records, want %d", len(recs), tc.n)
			}
			for i, r := range recs {
				if r.Err != nil || r.Seq != uint64(i) {
					t.Fatalf("record %d: seq %d err %v", i, r.Seq, r.Err)
				}
				e, err := DecodeEvent(r.Leaf)
				if err != nil {
					t.Fatal(err)
				}
				if e.Seq != uint64(i) || e.RequestID != fmt.Sprintf("req-%d", i) || e.Time.Location() != time.UTC {
					t.Fatalf("record %d decodes to %+v", i, e)
				}
			}
			rep := verifyLog(t, l, key.Public())
			requireOK(t, rep)
			if rep.Size != uint64(tc.n) {
				t.Fatalf("report size %d", rep.Size)
			}
			// A reopened Log continues where the stored head ends.
			l.Close()
			l2 := openLog(t, st, key)
			if l2.Size() != uint64(tc.n) {
				t.Fatalf("reopened size %d, want %d", l2.Size(), tc.n)
			}
			seq, err := l2.Append(context.Background(), testEvent(tc.n))
			if err != nil || seq != uint64(tc.n) {
				t.Fatalf("append after reopen: seq %d, %v", seq, err)
			}
			requireOK(t, verifyLog(t, l2, key.Public()))
		})
	}
}

func TestConcurrentAppendersGetUniqueContiguousSeqs(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	l := openLog(t, st, key)
	const workers, per = 32, 40
	seqs := make(chan uint64, workers*per)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				seq, err := l.Append(context.Background(), testEvent(w*per+i))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				seqs <- seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	var got []uint64
	for s := range seqs {
		got = append(got, s)
	}
	slices.Sort(got)
	for i, s := range got {
		if s != uint64(i) {
			t.Fatalf("seqs not unique and contiguous: position %d holds %d", i, s)
		}
	}
	if len(got) != workers*per {
		t.Fatalf("%d seqs, want %d", len(got), workers*per)
	}
	for _, n := range st.BatchSizes() {
		if n > 128 {
			t.Fatalf("batch of %d ops exceeds MaxBatch", n)
		}
	}
	requireOK(t, verifyLog(t, l, key.Public()))
}

// gate blocks every Batch until opened; entered is closed at the first.
type gate struct {
	entered chan struct{}
	open    chan struct{}
	once    sync.Once
}

func blockBatches(st *memstore.Store) *gate {
	g := &gate{entered: make(chan struct{}), open: make(chan struct{})}
	st.SetBatchHook(func([]store.Op) error {
		g.once.Do(func() { close(g.entered) })
		<-g.open
		return nil
	})
	return g
}

func waitQueued(t *testing.T, l *Log, n int) {
	t.Helper()
	for {
		l.mu.Lock()
		q := len(l.queue)
		l.mu.Unlock()
		if q >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// appendAsync starts n appenders and returns their results.
func appendAsync(l *Log, from, n int) <-chan result {
	out := make(chan result, n)
	for i := from; i < from+n; i++ {
		go func() {
			seq, err := l.Append(context.Background(), testEvent(i))
			out <- result{seq, err}
		}()
	}
	return out
}

func TestGroupCommitSignsOncePerGroup(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	signer := &countingSigner{Signer: newKey(t)}
	l := openLog(t, st, signer, WithCheckpointInterval(0)) // a checkpoint with every commit
	g := blockBatches(st)
	first := appendAsync(l, 0, 1)
	<-g.entered // the committer is stuck storing the first event
	const n = 300
	rest := appendAsync(l, 1, n)
	waitQueued(t, l, n)
	close(g.open)
	if r := <-first; r.err != nil || r.seq != 0 {
		t.Fatalf("first append: %+v", r)
	}
	for range n {
		if r := <-rest; r.err != nil || r.seq == 0 || r.seq > n {
			t.Fatalf("append: %+v", r)
		}
	}
	if got := signer.n.Load(); got != 2 {
		t.Fatalf("%d checkpoint signatures for 2 groups, want 2", got)
	}
	// 1 batch for the first event, ceil(300/126) = 3 chunks for the group
	// (each batch also carries the head and the writers' turn).
	if want := []int{3, 128, 128, 300 - 2*126 + 2}; !slices.Equal(st.BatchSizes(), want) {
		t.Fatalf("batch sizes %v, want %v", st.BatchSizes(), want)
	}
	cp := head(t, l)
	if cp.Size != n+1 {
		t.Fatalf("head size %d", cp.Size)
	}
	requireOK(t, verifyLog(t, l, signer.Public()))
}

func TestStoreFailureFailsAppend(t *testing.T) {
	errDown := errors.New("disk on fire")
	t.Run("whole group fails", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(1024))
		key := newKey(t)
		l := openLog(t, st, key)
		appendN(t, l, 0, 3)
		g := blockBatches(st)
		first := appendAsync(l, 3, 1)
		<-g.entered
		rest := appendAsync(l, 4, 20)
		waitQueued(t, l, 20)
		st.SetBatchHook(func([]store.Op) error { return errDown })
		close(g.open) // the blocked batch proceeds; the queued group fails
		if r := <-first; r.err != nil {
			t.Fatalf("first: %v", r.err)
		}
		for range 20 {
			if r := <-rest; !errors.Is(r.err, errDown) {
				t.Fatalf("append during outage: %+v, want the store error", r)
			}
		}
		if l.Size() != 4 {
			t.Fatalf("size %d after failed group, want 4", l.Size())
		}
		st.SetBatchHook(nil)
		seq, err := l.Append(context.Background(), testEvent(99))
		if err != nil || seq != 4 {
			t.Fatalf("append after recovery: %d, %v", seq, err)
		}
		requireOK(t, verifyLog(t, l, key.Public()))
	})
	t.Run("later chunk fails", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(5)) // 3 events + head + turn per chunk
		key := newKey(t)
		l := openLog(t, st, key)
		g := blockBatches(st)
		first := appendAsync(l, 0, 1)
		<-g.entered
		rest := appendAsync(l, 1, 10)
		waitQueued(t, l, 10)
		calls := 0
		st.SetBatchHook(func([]store.Op) error {
			if calls++; calls == 2 {
				return errDown // second chunk of the group
			}
			return nil
		})
		close(g.open)
		<-first
		ok, failed := 0, 0
		for range 10 {
			r := <-rest
			switch {
			case r.err == nil:
				ok++
			case errors.Is(r.err, errDown):
				failed++
			default:
				t.Fatalf("unexpected error %v", r.err)
			}
		}
		if ok != 3 || failed != 7 {
			t.Fatalf("%d stored, %d failed; want 3 (first chunk) and 7", ok, failed)
		}
		requireOK(t, verifyLog(t, l, key.Public()))
		appendN(t, l, 50, 5)
		requireOK(t, verifyLog(t, l, key.Public()))
		if l.Size() != 1+3+5 {
			t.Fatalf("size %d", l.Size())
		}
	})
	t.Run("applied but reported failed", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(1024))
		key := newKey(t)
		l := openLog(t, st, key)
		appendN(t, l, 0, 2)
		var lie atomic.Bool
		lie.Store(true)
		wrapped := &lyingStore{Store: st, lie: &lie}
		l2 := openLog(t, wrapped, key)
		if _, err := l2.Append(context.Background(), testEvent(2)); err == nil {
			t.Fatal("append reported success although the store said it failed")
		}
		lie.Store(false)
		seq, err := l2.Append(context.Background(), testEvent(3))
		if err != nil || seq != 3 {
			t.Fatalf("append after uncertain failure: seq %d, %v (want 3: event 2 was in fact stored)", seq, err)
		}
		requireOK(t, verifyLog(t, l2, key.Public()))
	})
	t.Run("signer fails", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(1024))
		l := openLog(t, st, failingSigner{newKey(t)})
		if _, err := l.Append(context.Background(), testEvent(0)); err == nil || !strings.Contains(err.Error(), "signing") {
			t.Fatalf("append with broken signer: %v", err)
		}
		if len(st.BatchSizes()) != 0 {
			t.Fatal("events stored although no checkpoint could be signed")
		}
	})
}

type failingSigner struct{ *ecdsa.PrivateKey }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("hsm unplugged")
}

// lyingStore applies a Batch, then reports a timeout (like etcd can).
type lyingStore struct {
	*memstore.Store
	lie *atomic.Bool
}

func (s *lyingStore) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	rev, err := s.Store.Batch(ctx, ops)
	if err == nil && s.lie.Load() {
		return 0, context.DeadlineExceeded
	}
	return rev, err
}

func TestConflictBetweenTwoLogsOnOneStore(t *testing.T) {
	t.Run("sequential", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(128))
		key := newKey(t)
		a := openLog(t, st, key)
		b := openLog(t, st, key) // opened on the empty store
		appendN(t, a, 0, 5)
		seq, err := b.Append(context.Background(), testEvent(5))
		if err != nil || seq != 5 {
			t.Fatalf("b's append after a's: seq %d, %v; want 5", seq, err)
		}
		seq, err = a.Append(context.Background(), testEvent(6))
		if err != nil || seq != 6 {
			t.Fatalf("a's append after b's: seq %d, %v; want 6", seq, err)
		}
		requireOK(t, verifyLog(t, a, key.Public()))
	})
	t.Run("concurrent", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(128))
		key := newKey(t)
		logs := []*Log{openLog(t, st, key), openLog(t, st, key)}
		var mu sync.Mutex
		bySeq := map[uint64]string{}
		var wg sync.WaitGroup
		for li, l := range logs {
			for w := range 8 {
				wg.Go(func() {
					for i := range 25 {
						e := testEvent(i)
						e.RequestID = fmt.Sprintf("log%d-w%d-%d", li, w, i)
						seq, err := l.Append(context.Background(), e)
						if err != nil {
							t.Errorf("Append: %v", err)
							return
						}
						mu.Lock()
						if prev, dup := bySeq[seq]; dup {
							t.Errorf("seq %d given to %s and %s", seq, prev, e.RequestID)
						}
						bySeq[seq] = e.RequestID
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		const total = 2 * 8 * 25
		cp := head(t, logs[0])
		if cp.Size != total || len(bySeq) != total {
			t.Fatalf("head size %d, %d distinct seqs; want %d", cp.Size, len(bySeq), total)
		}
		recs := readAll(t, logs[1], 0, cp.Size)
		for _, r := range recs {
			e, err := DecodeEvent(r.Leaf)
			if err != nil || e.RequestID != bySeq[r.Seq] {
				t.Fatalf("seq %d holds %q, appender was told %q (%v)", r.Seq, e.RequestID, bySeq[r.Seq], err)
			}
		}
		requireOK(t, verifyRecords(recs, VerifyOptions{Head: cp, PublicKey: key.Public()}))
	})
}

func TestRollbackIsRefused(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	l := openLog(t, st, key)
	appendN(t, l, 0, 4)
	st.RawDelete(headKeySuffix) // head "rolled back" to an empty log
	if _, err := l.Append(context.Background(), testEvent(4)); err == nil || !strings.Contains(err.Error(), "went back") {
		t.Fatalf("append after head rollback: %v", err)
	}
	fresh := openLog(t, st, key, WithMaxAttempts(3))
	if _, err := fresh.Append(context.Background(), testEvent(4)); err == nil || !strings.Contains(err.Error(), "exists beyond the stored head") {
		t.Fatalf("append over existing events: %v", err)
	}
	if got := st.Raw(fresh.eventKey(0)); string(got) == "" {
		t.Fatal("event 0 was removed")
	} else if e, _ := DecodeEvent(got); e.RequestID != "req-0" {
		t.Fatalf("event 0 was overwritten: %+v", e)
	}
}

func TestAppendRejectsInvalidEventAndClosedLog(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	l := openLog(t, st, newKey(t))
	for _, e := range []Event{
		{Result: ResultOK},
		{Operation: "kms.encrypt", Result: "maybe"},
		{Operation: "kms.encrypt", Result: ResultOK, Count: -1},
		{Operation: "kms.encrypt", Result: ResultOK, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if _, err := l.Append(context.Background(), e); err == nil {
			t.Errorf("invalid event %+v accepted", e)
		}
	}
	if l.Size() != 0 || len(st.BatchSizes()) != 0 {
		t.Fatal("invalid events changed the store")
	}
	l.Close()
	if _, err := l.Append(context.Background(), testEvent(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after Close: %v", err)
	}
}

func TestAppendCanceledBeforeCommitIsNotStored(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	l := openLog(t, st, key)
	g := blockBatches(st)
	first := appendAsync(l, 0, 1)
	<-g.entered
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.Append(ctx, testEvent(1))
		errc <- err
	}()
	waitQueued(t, l, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "not stored") {
		t.Fatalf("canceled append: %v", err)
	}
	close(g.open)
	<-first
	appendN(t, l, 2, 1)
	if l.Size() != 2 {
		t.Fatalf("size %d, want 2 (the canceled event must not be stored)", l.Size())
	}
	requireOK(t, verifyLog(t, l, key.Public()))
}

func TestOpenErrors(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		name   string
		st     store.Store
		signer crypto.Signer
		origin string
	}{
		{"no signer", st, nil, testOrigin},
		{"P-384 signer", st, p384, testOrigin},
		{"empty origin", st, newKey(t), ""},
		{"newline in origin", st, newKey(t), "a\nb"},
		{"one-op batches", memstore.New(memstore.WithMaxBatch(1)), newKey(t), testOrigin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(context.Background(), tc.st, tc.signer, tc.origin); err == nil {
				t.Fatal("Open succeeded")
			}
		})
	}
	t.Run("unreadable head", func(t *testing.T) {
		st := memstore.New(memstore.WithMaxBatch(1024))
		st.RawPut(headKeySuffix, []byte("{garbage"))
		if _, err := Open(context.Background(), st, newKey(t), testOrigin); err == nil || !strings.Contains(err.Error(), "head") {
			t.Fatalf("Open on a bad head: %v", err)
		}
		st.SetCorrupt(headKeySuffix)
		if _, err := Open(context.Background(), st, newKey(t), testOrigin); err == nil || !errors.Is(err, memstore.ErrCorrupt) {
			t.Fatalf("Open on an unreadable head: %v", err)
		}
	})
}

func TestPrefixKeepsLogsApart(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	a := openLog(t, st, key, WithPrefix("a/"))
	b := openLog(t, st, key, WithPrefix("b/"))
	appendN(t, a, 0, 3)
	appendN(t, b, 0, 1)
	if a.Size() != 3 || b.Size() != 1 {
		t.Fatalf("sizes %d %d", a.Size(), b.Size())
	}
	if st.Raw("a/audit/e/00000000000000000002") == nil || st.Raw("b/audit/head") == nil {
		t.Fatal("keys not laid out under the prefixes")
	}
	requireOK(t, verifyLog(t, a, key.Public()))
	requireOK(t, verifyLog(t, b, key.Public()))
}

func TestReadBlocksAndFallback(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	l := openLog(t, st, key, WithMaxGroup(1024))
	// Append 1234 events in large groups.
	g := blockBatches(st)
	first := appendAsync(l, 0, 1)
	<-g.entered
	rest := appendAsync(l, 1, 1233)
	waitQueued(t, l, 1233)
	close(g.open)
	<-first
	for range 1233 {
		if r := <-rest; r.err != nil {
			t.Fatal(r.err)
		}
	}
	st.SetBatchHook(nil)
	st.SetCorrupt(l.eventKey(1003))
	for _, tc := range []struct{ from, to uint64 }{
		{0, 1234}, {995, 1010}, {1003, 1004}, {7, 7}, {1230, 5000}, {0, 1000}, {1000, 1100},
	} {
		recs := readAll(t, l, tc.from, tc.to)
		want := min(tc.to, 1234) - min(tc.from, min(tc.to, 1234))
		if uint64(len(recs)) != want {
			t.Fatalf("Read(%d,%d): %d records, want %d", tc.from, tc.to, len(recs), want)
		}
		for i, r := range recs {
			seq := tc.from + uint64(i)
			if r.Seq != seq {
				t.Fatalf("Read(%d,%d): record %d has seq %d", tc.from, tc.to, i, r.Seq)
			}
			if (seq == 1003) != (r.Err != nil) {
				t.Fatalf("seq %d: err %v", seq, r.Err)
			}
			if r.Err == nil {
				if s, ok := leafSeq(r.Leaf); !ok || s != seq {
					t.Fatalf("seq %d holds leaf for %d", seq, s)
				}
			}
		}
	}
	stop := errors.New("stop")
	n := 0
	err := l.Read(context.Background(), 0, 1234, func(Record) error {
		if n++; n == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 5 {
		t.Fatalf("Read did not stop at the callback's error: %v after %d", err, n)
	}
	st.Close()
	if err := l.Read(context.Background(), 0, 10, func(Record) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Read on a closed store: %v", err)
	}
}

func TestWaitSeesAppendsFromAnyLog(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	a := openLog(t, st, key)
	b := openLog(t, st, key)
	appendN(t, a, 0, 2)
	ctx := context.Background()
	if n, err := b.Wait(ctx, 1); err != nil || n != 2 {
		t.Fatalf("Wait for an already stored event: %d, %v", n, err)
	}
	got := make(chan uint64, 2)
	go func() {
		n, err := b.Wait(ctx, 2) // woken by a's append through the store watch
		if err != nil {
			t.Error(err)
		}
		got <- n
		n, err = a.Wait(ctx, n) // woken by a's own commit
		if err != nil {
			t.Error(err)
		}
		got <- n
	}()
	appendN(t, a, 2, 1)
	if n := <-got; n != 3 {
		t.Fatalf("Wait returned %d, want 3", n)
	}
	appendN(t, a, 3, 1)
	if n := <-got; n != 4 {
		t.Fatalf("Wait returned %d, want 4", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Wait(cctx, 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with canceled ctx: %v", err)
	}
}

func TestHeadOfEmptyLogAndInterruptedCommit(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(4)) // 2 events per chunk (+ head and turn)
	key := newKey(t)
	l := openLog(t, st, key)
	cp := head(t, l)
	if cp.Size != 0 {
		t.Fatalf("empty head size %d", cp.Size)
	}
	requireOK(t, verifyRecords(nil, VerifyOptions{Head: cp, PublicKey: key.Public()}))
	// A group whose last chunk fails leaves a head whose checkpoint lags;
	// Head signs a fresh one for the full stored size.
	g := blockBatches(st)
	first := appendAsync(l, 0, 1)
	<-g.entered
	rest := appendAsync(l, 1, 4)
	waitQueued(t, l, 4)
	calls := 0
	st.SetBatchHook(func([]store.Op) error {
		if calls++; calls == 2 {
			return errors.New("gone") // the group's last chunk
		}
		return nil
	})
	close(g.open)
	<-first
	for range 4 {
		<-rest
	}
	h, _, err := l.loadHead(context.Background())
	if err != nil || h.Size != 3 || h.Checkpoint == nil || h.Checkpoint.Size != 1 {
		t.Fatalf("stored head: %+v %v; want size 3 with the checkpoint for size 1", h, err)
	}
	cp = head(t, l)
	if cp.Size != 3 {
		t.Fatalf("Head size %d, want 3", cp.Size)
	}
	requireOK(t, verifyLog(t, l, key.Public()))
}

// sortedKinds renders problems as "kind@seq" for comparison.
func sortedKinds(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s@%d", p.Kind, p.Seq))
	}
	sort.Strings(out)
	return out
}
