package audit

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// Commits sign a checkpoint into the stored head at most once per interval;
// between those the stored checkpoint lags, and Head signs one for the full
// stored size when asked, kept for the next caller while the head stays.
func TestCheckpointsSignedOnSchedule(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	signer := &countingSigner{Signer: newKey(t)}
	l := openLog(t, st, signer, WithCheckpointInterval(time.Hour))
	appendN(t, l, 0, 5) // five commits, one after the other
	if got := signer.n.Load(); got != 1 {
		t.Fatalf("%d signatures for 5 commits within the interval, want 1 (the first commit)", got)
	}
	h, _, err := l.loadHead(context.Background())
	if err != nil || h.Size != 5 || h.Checkpoint == nil || h.Checkpoint.Size != 1 {
		t.Fatalf("stored head %+v, %v: want size 5 with the checkpoint for size 1", h, err)
	}
	cp := head(t, l)
	if cp.Size != 5 || signer.n.Load() != 2 {
		t.Fatalf("Head at size %d after %d signatures, want 5 after 2", cp.Size, signer.n.Load())
	}
	requireOK(t, verifyLog(t, l, signer.Public())) // its own Head: served again, not signed
	if again := head(t, l); !bytes.Equal(again.Signature, cp.Signature) || signer.n.Load() != 2 {
		t.Fatalf("Head asked again before the head moved signed anew (%d signatures)", signer.n.Load())
	}
	appendN(t, l, 5, 1)
	if cp2 := head(t, l); cp2.Size != 6 || signer.n.Load() != 3 {
		t.Fatalf("Head after one more event: size %d, %d signatures; want 6 and 3", cp2.Size, signer.n.Load())
	}
	requireOK(t, verifyLog(t, l, signer.Public()))

	// Once the interval passed, the next commit signs again.
	st2 := memstore.New(memstore.WithMaxBatch(128))
	signer2 := &countingSigner{Signer: newKey(t)}
	l2 := openLog(t, st2, signer2, WithCheckpointInterval(time.Millisecond))
	for i := range 3 {
		appendN(t, l2, i, 1)
		time.Sleep(2 * time.Millisecond)
	}
	h, _, err = l2.loadHead(context.Background())
	if err != nil || signer2.n.Load() != 3 || h.Checkpoint == nil || h.Checkpoint.Size != 3 {
		t.Fatalf("%d signatures, stored head %+v, %v: want 3 and a stored checkpoint for size 3", signer2.n.Load(), h, err)
	}
}

// Whatever Head serves covers every event whose Append returned before it
// was asked, and verifies with the events read back, while many callers
// append and the stored checkpoint lags.
func TestHeadCoversEveryReturnedAppend(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(16))
	key := newKey(t)
	l := openLog(t, st, key, WithCheckpointInterval(time.Hour))
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for c := range 8 {
		wg.Go(func() {
			for i := range 25 {
				seq, err := l.Append(context.Background(), testEvent(c*100+i))
				if err != nil {
					errs <- err.Error()
					return
				}
				cp, err := l.Head(context.Background())
				if err != nil || cp.Size <= seq || checkpoint.Verify(cp, key.Public()) != nil {
					errs <- "Head does not cover a returned append"
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	requireOK(t, verifyLog(t, l, key.Public()))
}

// A crash after commits that carried a lagging checkpoint: the reopened log
// (another process) serves a checkpoint for every stored event, the log
// verifies, and appending goes on.
func TestReopenAfterLaggingCheckpoint(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	l, err := Open(context.Background(), st, key, testOrigin, WithCheckpointInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 0, 7)
	// No Close: the process died. The stored checkpoint is for size 1.
	l2 := openLog(t, st, key)
	cp := head(t, l2)
	if cp.Size != 7 {
		t.Fatalf("reopened log's Head at size %d, want 7", cp.Size)
	}
	requireOK(t, verifyLog(t, l2, key.Public()))
	appendN(t, l2, 7, 3)
	requireOK(t, verifyLog(t, l2, key.Public()))
	l.Close()
}

// An event altered in storage while the stored checkpoint lags is caught:
// Head signs the head's tree, not the events, so the altered event does not
// verify; a head rewritten to the same size with another tree is not served
// the checkpoint signed for the first.
func TestLaggingCheckpointDoesNotHideAlteredEvents(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	l := openLog(t, st, key, WithCheckpointInterval(time.Hour))
	appendN(t, l, 0, 6)
	cp := head(t, l)
	kv, err := st.Get(context.Background(), l.eventKey(4))
	if err != nil {
		t.Fatal(err)
	}
	altered := bytes.Replace(kv.Value, []byte("req-4"), []byte("req-X"), 1)
	if _, err := st.Put(context.Background(), l.eventKey(4), altered); err != nil {
		t.Fatal(err)
	}
	rep := verifyLog(t, l, key.Public())
	if rep.OK() {
		t.Fatal("a log with an altered event verified against the checkpoint Head served")
	}
	// A head at the same size with another tree (event 5's leaf changed and
	// the head recomputed, as a writer with the barrier key could): Head must
	// sign that tree, not serve the checkpoint it signed for the real one.
	h, rev, err := l.loadHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rng := factory.NewEmptyRange(0)
	for _, r := range readAll(t, l, 0, 6) {
		leaf := r.Leaf
		if r.Seq == 5 {
			leaf = bytes.Replace(leaf, []byte("req-5"), []byte("req-Y"), 1)
		}
		rng.Append(th.HashLeaf(leaf), nil)
	}
	h.Hashes, h.Checkpoint = rng.Hashes(), nil
	hv, err := encodeHead(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CompareAndSwap(context.Background(), l.headKey, hv, rev); err != nil {
		t.Fatal(err)
	}
	if cp2 := head(t, l); bytes.Equal(cp2.RootHash, cp.RootHash) {
		t.Fatal("Head served the checkpoint of the earlier tree for a head with another tree")
	}
}

// The stored leaves are byte for byte EncodeEvent of each event at its
// sequence number, whether the group shares one buffer or not (leaf
// hashes, tree heads and checkpoints unchanged), across chunked groups.
func TestGroupLeavesAreEncodeEvent(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(5))
	now := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	l := openLog(t, st, newKey(t), WithClock(func() time.Time { return now }))
	g := blockBatches(st)
	first := appendAsync(l, 0, 1)
	<-g.entered
	rest := appendAsync(l, 1, 20)
	waitQueued(t, l, 20)
	close(g.open)
	<-first
	for range 20 {
		if r := <-rest; r.err != nil {
			t.Fatal(r.err)
		}
	}
	for _, r := range readAll(t, l, 0, 21) {
		ev, err := DecodeEvent(r.Leaf)
		if err != nil {
			t.Fatal(err)
		}
		want, err := EncodeEvent(ev)
		if err != nil || !bytes.Equal(want, r.Leaf) || ev.Seq != r.Seq || ev.Time != now {
			t.Fatalf("leaf %d: %s, want %s (%v)", r.Seq, r.Leaf, want, err)
		}
	}
}
