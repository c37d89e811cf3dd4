package versioned

import (
	"context"
	"errors"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

type doc struct {
	N    uint64 `json:"n"`
	Text string `json:"text"`
}

func newDocs(st store.Store, keepLatest bool) *Store[doc] {
	return New(st, "doc", keepLatest, func(d doc) uint64 { return d.N })
}

// TestCommitNumbersAndHead: versions are numbered from the head, the head
// is written with each, both under the owner's keys, and Latest appears in
// the head only where the owner keeps it.
func TestCommitNumbersAndHead(t *testing.T) {
	ctx := context.Background()
	for _, keep := range []bool{false, true} {
		st := memstore.New()
		s := newDocs(st, keep)
		if _, err := s.Version(ctx, 1); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("version of an empty store: %v", err)
		}
		for i, text := range []string{"a", "b", "c"} {
			d, err := s.Commit(ctx, func(h Head) (doc, error) { return doc{N: h.Next(), Text: text}, nil })
			if err != nil || d.N != uint64(i+1) {
				t.Fatalf("commit %d: %+v %v", i, d, err)
			}
		}
		want := `{"current":3}`
		if keep {
			want = `{"current":3,"latest":3}`
		}
		if got := string(st.Raw("doc/head")); got != want {
			t.Fatalf("head %s, want %s", got, want)
		}
		if got := string(st.Raw("doc/v/00000000000000000002")); got != `{"n":2,"text":"b"}` {
			t.Fatalf("version 2 stored as %s", got)
		}
		vs, h, err := s.List(ctx)
		if err != nil || h.Current != 3 || len(vs) != 3 || vs[0].Text != "a" || vs[2].Text != "c" {
			t.Fatalf("list: %+v %+v %v", vs, h, err)
		}
	}
}

// TestCommitRebuildsAfterAConflict: another writer moving the head between
// the read and the write makes Commit read again and rebuild, so neither
// version is lost; a build error is returned as it is, storing nothing.
func TestCommitRebuildsAfterAConflict(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	s, other := newDocs(st, true), newDocs(st, true)
	builds := 0
	d, err := s.Commit(ctx, func(h Head) (doc, error) {
		builds++
		if builds == 1 {
			if _, err := other.Commit(ctx, func(h Head) (doc, error) { return doc{N: h.Next(), Text: "other"}, nil }); err != nil {
				t.Fatal(err)
			}
		}
		return doc{N: h.Next(), Text: "mine"}, nil
	})
	if err != nil || d.N != 2 || builds != 2 {
		t.Fatalf("commit after a conflict: %+v %v (%d builds)", d, err, builds)
	}
	boom := errors.New("boom")
	if _, err := s.Commit(ctx, func(Head) (doc, error) { return doc{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("build error: %v", err)
	}
	if _, h, _ := s.List(ctx); h.Current != 2 {
		t.Fatalf("head moved to %d", h.Current)
	}
}

// TestCommitGivesUpWhenAlwaysRaced: a head that moves at every attempt
// ends in a bounded Precondition error, not a loop.
func TestCommitGivesUpWhenAlwaysRaced(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	s, other := newDocs(st, false), newDocs(st, false)
	_, err := s.Commit(ctx, func(h Head) (doc, error) {
		if _, err := other.Commit(ctx, func(h Head) (doc, error) { return doc{N: h.Next()}, nil }); err != nil {
			t.Fatal(err)
		}
		return doc{N: h.Next()}, nil
	})
	if errs.KindOf(err) != errs.Precondition {
		t.Fatalf("always raced: %v", err)
	}
}

// TestUnreadableStoredValues: a head or version that is not JSON is an
// error naming the document, never a zero value.
func TestUnreadableStoredValues(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	s := newDocs(st, false)
	st.RawPut("doc/v/00000000000000000001", []byte("{"))
	if _, err := s.Version(ctx, 1); err == nil {
		t.Fatal("unreadable version read")
	}
	if _, _, err := s.List(ctx); err == nil {
		t.Fatal("unreadable version listed")
	}
	st.RawPut("doc/head", []byte("x"))
	if _, _, err := s.Head(ctx); err == nil {
		t.Fatal("unreadable head read")
	}
}
