package boltstore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
)

// TestJournalStaleSpliceChangesNothing (red team): an attacker (or a
// careless restore) who can write the data directory copies an older
// journal of the same store in beside a newer ward.db. Its frames are all
// at or below bbolt's revision, so Open applies none of them: the keys it
// wrote and the deletes it holds do not come back, the newer values stay.
// With the older ward.db copied back too, the store is exactly that older
// state: nothing a copy of ward.db alone did not already allow.
func TestJournalStaleSpliceChangesNothing(t *testing.T) {
	src := t.TempDir()
	path := filepath.Join(src, "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	s.jr.flushMu.Lock() // the old frames stay in the journal
	if _, err := s.Put(ctx, "kms/key", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "audit/head", []byte("size=1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "doomed", []byte("x")); err != nil {
		t.Fatal(err)
	}
	old := copyDir(t, src) // ward.db and the journal of that moment
	s.jr.flushMu.Unlock()
	for i, kv := range []store.KV{{Key: "kms/key", Value: []byte("v2")}, {Key: "audit/head", Value: []byte("size=2")}} {
		if _, err := s.Put(ctx, kv.Key, kv.Value); err != nil {
			t.Fatal(i, err)
		}
	}
	if err := s.Delete(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	s.flush()
	newer, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	read := func(dir string) []store.KV {
		t.Helper()
		r, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer r.Close()
		kvs, err := r.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		return kvs
	}
	same := func(a, b []store.KV) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i].Key != b[i].Key || a[i].Revision != b[i].Revision || !bytes.Equal(a[i].Value, b[i].Value) {
				return false
			}
		}
		return true
	}
	// The old journal beside the newer ward.db (cleanly closed: no journal).
	for _, name := range []string{"ward.db.journal0", "ward.db.journal1"} {
		b, err := os.ReadFile(filepath.Join(old, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := read(src); !same(got, newer) {
		t.Fatalf("an old journal spliced beside a newer ward.db changed the store:\n got %+v\nwant %+v", got, newer)
	}
	// The old ward.db and its journal: that older state, exactly.
	r, err := Open(filepath.Join(old, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	oldKVs, _ := r.List(ctx, "")
	r.Close()
	if len(oldKVs) != 3 || oldKVs[2].Key != "kms/key" || string(oldKVs[2].Value) != "v1" {
		t.Fatalf("the old copy: %+v", oldKVs)
	}
}
