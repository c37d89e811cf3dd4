package boltstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
)

// smallFS mounts a tmpfs of size bytes on a new temporary directory
// (root only: skipped elsewhere, a failure under CI=true).
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to mount a small tmpfs (CI runs as root)")
		}
		t.Skip("needs root to mount a small tmpfs; CI runs it as root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mounting a tmpfs: %v", err)
		}
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes a file in dir until the filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

// TestJournalDiskFull (red team): with the disk full, bbolt cannot take
// the flushes and the journal cannot grow. A write that finds no room
// fails and is not acknowledged; those acknowledged before are served and
// survive a crash; once there is room again the store writes and flushes
// as before, and a clean close leaves everything in bbolt.
func TestJournalDiskFull(t *testing.T) {
	dir := smallFS(t, 3<<20)
	path := filepath.Join(dir, "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	acked := map[string]int64{}
	if rev, err := s.Put(ctx, "before", []byte("full")); err != nil {
		t.Fatal(err)
	} else {
		acked["before"] = rev
	}
	s.flush()
	filler := fill(t, dir)

	val := bytes.Repeat([]byte{0xa5}, 30000)
	var failed string
	for i := range 200 {
		k := fmt.Sprintf("full/%03d", i)
		rev, err := s.Put(ctx, k, val)
		if err != nil {
			t.Logf("write %d refused: %v", i, err)
			failed = k
			break
		}
		acked[k] = rev
		if i%4 == 0 {
			s.flush() // fails: bbolt has no room (the journal keeps its frames)
		}
	}
	if failed == "" {
		t.Fatal("200 writes of 30 kB acknowledged on a full 3 MiB filesystem")
	}
	if _, err := s.Get(ctx, failed); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused write %s is visible: %v", failed, err)
	}
	check := func(what string, st *Store) {
		t.Helper()
		for k, rev := range acked {
			kv, err := st.Get(ctx, k)
			if err != nil || kv.Revision != rev {
				t.Fatalf("%s: acknowledged %s (rev %d): %+v, %v", what, k, rev, kv.Revision, err)
			}
		}
		if _, err := st.Get(ctx, failed); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s: the refused write %s is there: %v", what, failed, err)
		}
	}
	check("while full", s)

	// A crash now: the copy (on another filesystem) replays every
	// acknowledged write and not the refused one.
	crashed := copyDir(t, dir)
	os.Remove(filepath.Join(crashed, "filler"))
	r, err := Open(filepath.Join(crashed, "ward.db"))
	if err != nil {
		t.Fatalf("opening a copy of the full store: %v", err)
	}
	check("crash while full", r)
	r.Close()

	// Room again: writes and flushes go on.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	rev, err := s.Put(ctx, failed, []byte("now"))
	if err != nil {
		t.Fatalf("a write once there is room again: %v", err)
	}
	delete(acked, failed)
	acked[failed] = rev
	failed = "never-written"
	s.flush()
	if n := len(s.overlay); n != 0 {
		t.Fatalf("%d entries left in the overlay after a flush with room", n)
	}
	check("room again", s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range journalPaths(path) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a clean close: %v", p, err)
		}
	}
	r, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	check("after a clean close", r)
}
