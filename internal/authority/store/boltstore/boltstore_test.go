package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/storetest"
)

func openTemp(t testing.TB, opts ...Option) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "ward.db"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t) })
}

func TestReopenKeepsDataAndRevisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ward.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	r1, err := s.Put(ctx, "a", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Batch(ctx, []store.Op{{Key: "b", Value: []byte("two"), ExpectRevision: 0}, {Key: "c", Value: []byte("three"), ExpectRevision: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	for key, want := range map[string]store.KV{"a": {Key: "a", Value: []byte("one"), Revision: r1}, "b": {Key: "b", Value: []byte("two"), Revision: r2}} {
		got, err := s.Get(ctx, key)
		if err != nil || string(got.Value) != string(want.Value) || got.Revision != want.Revision {
			t.Errorf("after reopen Get(%q) = %+v, %v; want %+v", key, got, err, want)
		}
	}
	if _, err := s.Get(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted key c after reopen: %v, want ErrNotFound", err)
	}
	// r2+1 was the delete; the next write must come after it.
	r3, err := s.Put(ctx, "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r3 != r2+2 {
		t.Errorf("first revision after reopen = %d, want %d (counter must persist)", r3, r2+2)
	}
	if _, err := s.CompareAndSwap(ctx, "a", []byte("x"), r1); err != nil {
		t.Errorf("CAS with the revision read before reopen: %v", err)
	}
}

func TestFileMode(t *testing.T) {
	s := openTemp(t)
	st, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
}

func TestLockedFile(t *testing.T) {
	s := openTemp(t)
	// bbolt's flock conflicts between open file descriptions, so a second
	// Open in this process is refused just like another process would be.
	_, err := Open(s.Path(), WithLockTimeout(50e6))
	if err == nil {
		t.Fatal("second Open of a locked file succeeded")
	}
	if !strings.Contains(err.Error(), "in use by another ward process") || !errors.Is(err, bolterrors.ErrTimeout) {
		t.Errorf("error %q does not say the data directory is in use", err)
	}
	if _, err := s.Put(t.Context(), "still", []byte("works")); err != nil {
		t.Errorf("first store broken by the refused Open: %v", err)
	}
}

func TestSlowWatcherDropped(t *testing.T) {
	const buf = 4
	s := openTemp(t, WithWatchBuffer(buf))
	slow, err := s.Watch(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	// No one reads slow: writers must still complete.
	for i := 0; i < 3*buf; i++ {
		if _, err := s.Put(t.Context(), fmt.Sprintf("k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range slow {
		n++
	}
	if n != buf {
		t.Errorf("slow watcher got %d events before being dropped, want %d (its buffer)", n, buf)
	}
	// A new watcher still works.
	fresh, err := s.Watch(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), "after", nil); err != nil {
		t.Fatal(err)
	}
	if ev := <-fresh; ev.Key != "after" {
		t.Errorf("fresh watcher got %q, want after", ev.Key)
	}
}

func TestCorruptFile(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(tx *bbolt.Tx) error
		openErr string // substring of the Open error, or "" if Open succeeds
		getErr  string // substring of the Get("k") error
	}{
		{
			name:    "foreign format",
			mutate:  func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, u64(99)) },
			openErr: "file format",
		},
		{
			name:    "revision counter truncated",
			mutate:  func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyRevision, []byte{1}) },
			openErr: "revision counter is corrupt",
		},
		{
			name:   "entry too short",
			mutate: func(tx *bbolt.Tx) error { return tx.Bucket(bucketKV).Put([]byte("k"), []byte{1, 2, 3}) },
			getErr: "corrupt",
		},
		{
			name:   "entry with revision 0",
			mutate: func(tx *bbolt.Tx) error { return tx.Bucket(bucketKV).Put([]byte("k"), make([]byte, 9)) },
			getErr: "invalid revision",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ward.db")
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			db, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tc.mutate); err != nil {
				t.Fatal(err)
			}
			db.Close()
			s, err = Open(path)
			if tc.openErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.openErr) {
					t.Fatalf("Open error = %v, want one containing %q", err, tc.openErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.Get(t.Context(), "k")
			if err == nil || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), tc.getErr) {
				t.Errorf("Get error = %v, want one containing %q", err, tc.getErr)
			}
			if _, err := s.List(t.Context(), ""); err == nil {
				t.Error("List over a corrupt entry succeeded")
			}
			if _, err := s.CompareAndSwap(t.Context(), "k", nil, 0); err == nil || errors.Is(err, store.ErrConflict) {
				t.Errorf("CAS over a corrupt entry: %v, want a corruption error", err)
			}
		})
	}
}

func TestOpenOptions(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"defaults", nil, true},
		{"max batch 0", []Option{WithMaxBatch(0)}, false},
		{"watch buffer 0", []Option{WithWatchBuffer(0)}, false},
		{"max batch 5", []Option{WithMaxBatch(5)}, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("db%d", i))
			s, err := Open(path, tc.opts...)
			if (err == nil) != tc.ok {
				t.Fatalf("Open error = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				if _, statErr := os.Stat(path); !os.IsNotExist(statErr) {
					t.Errorf("rejected Open left a file behind")
				}
				return
			}
			s.Close()
		})
	}
	if _, err := Open(filepath.Join(dir, "missing-dir", "ward.db")); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
}

func TestRevisionEncoding(t *testing.T) {
	// The on-disk entry is big-endian revision then value.
	s := openTemp(t)
	rev, err := s.Put(t.Context(), "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketKV).Get([]byte("k"))
		if int64(binary.BigEndian.Uint64(raw)) != rev || string(raw[8:]) != "v" {
			return fmt.Errorf("raw entry %x, want revision %d then %q", raw, rev, "v")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, openTemp(b))
}

// FuzzDecode feeds arbitrary stored entries (the file is input we did not
// necessarily write) to the entry decoder: it must never panic, must reject
// short or revision-0 entries, and must round-trip what put writes.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1})
	f.Add(append(u64(42), "value"...))
	f.Add(append(u64(1<<63), 0xff))
	f.Fuzz(func(t *testing.T, raw []byte) {
		rev, val, err := decode("k", raw)
		if err != nil {
			if strings.Contains(err.Error(), string(raw)) && len(raw) > 8 {
				t.Errorf("error echoes the stored value: %v", err)
			}
			return
		}
		if len(raw) < 8 || rev <= 0 {
			t.Fatalf("decode accepted %x as revision %d", raw, rev)
		}
		if again := append(u64(uint64(rev)), val...); string(again) != string(raw) {
			t.Fatalf("re-encoding %x gave %x", raw, again)
		}
	})
}
