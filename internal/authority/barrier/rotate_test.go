package barrier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

func termsOf(t *testing.T, raw store.Store) map[uint32]int {
	t.Helper()
	kvs, err := raw.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]int{}
	for _, kv := range kvs {
		if reserved(kv.Key) {
			continue
		}
		term, ok := ValueTerm(kv.Value)
		if !ok {
			t.Fatalf("%s is not a barrier value", kv.Key)
		}
		out[term]++
	}
	return out
}

// TestRotateRewriteResumesAfterCrash: a rotation makes a new term active
// at once (old values stay readable); its rewrite, stopped half way as if
// the process died, resumes from its saved cursor in a new barrier over
// the same store and moves every value; another authority holding the old
// keyring reads values of the new term by reloading the keyring.
func TestRotateRewriteResumesAfterCrash(t *testing.T) {
	ctx := context.Background()
	raw := memstore.New(memstore.WithMaxBatch(64))
	b := New(raw)
	root := randomKey()
	if err := b.Initialize(ctx, root); err != nil {
		t.Fatal(err)
	}
	if err := b.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	other := New(raw) // a second authority on the same store
	if err := other.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	v := b.Store()
	const n = 3000
	for i := range n {
		if _, err := v.Put(ctx, fmt.Sprintf("data/%05d", i), []byte(fmt.Sprintf("value-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	term, err := b.Rotate(ctx, time.Now())
	if err != nil || term != 2 {
		t.Fatalf("rotate: term %d, %v", term, err)
	}
	if _, err := b.Rotate(ctx, time.Now()); !errors.Is(err, ErrRotationRunning) {
		t.Fatalf("a second rotation during the rewrite: %v", err)
	}
	if _, err := v.Put(ctx, "data/new", []byte("written after the rotation")); err != nil {
		t.Fatal(err)
	}
	if got := termsOf(t, raw); got[2] != 1 || got[1] != n {
		t.Fatalf("terms after rotate: %v", got)
	}
	// The other authority reads a term-2 value by reloading the keyring.
	if kv, err := other.Store().Get(ctx, "data/new"); err != nil || string(kv.Value) != "written after the rotation" {
		t.Fatalf("other authority reading a new-term value: %q %v", kv.Value, err)
	}
	if other.ActiveTerm() != 2 {
		t.Fatalf("the other authority's active term is %d after reloading", other.ActiveTerm())
	}

	// Crash half way: stop after the first saved batch.
	cctx, cancel := context.WithCancel(ctx)
	batches := 0
	_, err = b.Rewrite(cctx, time.Now, func(st RotationState) {
		if batches++; batches == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rewrite: %v", err)
	}
	st, err := b.RotationStatus(ctx)
	if err != nil || st.Done || st.Cursor == "" || st.Rewritten == 0 {
		t.Fatalf("saved progress: %+v %v", st, err)
	}
	saved := *st
	mixed := termsOf(t, raw)
	if mixed[1] == 0 || mixed[2] <= 1 {
		t.Fatalf("terms half way: %v", mixed)
	}
	b.Seal()

	// A new process: unseal, resume.
	b2 := New(raw)
	if err := b2.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	var first *RotationState
	res, err := b2.Rewrite(ctx, time.Now, func(st RotationState) {
		if first == nil {
			first = &st
		}
	})
	if err != nil || !res.Done || res.Failed != 0 {
		t.Fatalf("resumed rewrite: %+v %v", res, err)
	}
	if first.Scanned <= saved.Scanned {
		t.Fatalf("the resumed rewrite started over (first progress %+v, saved %+v)", first, saved)
	}
	if got := termsOf(t, raw); got[1] != 0 || got[2] != n+1 {
		t.Fatalf("terms after the rewrite: %v", got)
	}
	for _, k := range []string{"data/00000", "data/02999", "data/new"} {
		if _, err := b2.Store().Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if res.Rewritten != n {
		t.Fatalf("rewritten %d, want %d (each value once)", res.Rewritten, n)
	}
	// A finished rotation allows the next one.
	if term, err := b2.Rotate(ctx, time.Now()); err != nil || term != 3 {
		t.Fatalf("next rotation: %d %v", term, err)
	}
}

func TestRekeyRewrapsKeyringOnly(t *testing.T) {
	ctx := context.Background()
	raw := memstore.New()
	b := New(raw)
	root := randomKey()
	if err := b.Initialize(ctx, root); err != nil {
		t.Fatal(err)
	}
	if err := b.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store().Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before, _ := raw.Get(ctx, "k")
	other := New(raw) // another authority, unsealed before the rekey
	if err := other.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	newRoot := randomKey()
	if err := b.Rekey(ctx, randomKey(), newRoot); !errors.Is(err, ErrBadRootKey) {
		t.Fatalf("rekey with a wrong root key: %v", err)
	}
	if err := b.Rekey(ctx, root, newRoot); err != nil {
		t.Fatal(err)
	}
	after, _ := raw.Get(ctx, "k")
	if after.Revision != before.Revision {
		t.Fatal("rekey rewrote a value")
	}
	b2 := New(raw)
	if err := b2.Unseal(ctx, root); !errors.Is(err, ErrBadRootKey) {
		t.Fatalf("old root key after rekey: %v", err)
	}
	if err := b2.Unseal(ctx, newRoot); err != nil {
		t.Fatal(err)
	}
	if kv, err := b2.Store().Get(ctx, "k"); err != nil || string(kv.Value) != "v" {
		t.Fatal(err)
	}
	// The other authority still reads, but cannot rotate on the old key.
	if _, err := other.Store().Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Rotate(ctx, time.Now()); err == nil || !strings.Contains(err.Error(), "another authority rekeyed") {
		t.Fatalf("rotate on an authority unsealed before a rekey: %v", err)
	}
	// The rekeyed barrier still rotates (it kept the new root key).
	if _, err := b.Rotate(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
}
