package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/storetest"
)

func TestConformanceJournal(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t, WithJournal()) })
}

// TestConformanceJournalFlushing (red team): the conformance suite with
// the overlay moved into bbolt as often as possible while each test runs,
// so its reads, conditions, lists and watches meet writes half in the
// overlay, half in bbolt.
func TestConformanceJournalFlushing(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := openTemp(t, WithJournal())
		done := make(chan struct{})
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			for {
				select {
				case <-done:
					return
				default:
				}
				s.life.RLock()
				closed := s.closed
				if !closed {
					s.flush()
				}
				s.life.RUnlock()
				if closed {
					return
				}
				runtime.Gosched()
			}
		}()
		t.Cleanup(func() { close(done); <-stopped })
		return s
	})
}

// copyDir copies the data directory of a running store as a crash would
// leave it: bbolt as far as the flusher got, the journal files as written.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	copyDirTo(t, src, dst)
	return dst
}

// copyDirTo is copyDir into dst, an existing directory.
func copyDirTo(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestJournalReplaysAfterCrash: writes acknowledged by a journaled store
// that never closed are all there when the directory is opened again,
// with their revisions, with or without the journal.
func TestJournalReplaysAfterCrash(t *testing.T) {
	for _, reopenJournal := range []bool{true, false} {
		t.Run(fmt.Sprintf("reopen-journal=%v", reopenJournal), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			want := map[string]store.KV{}
			for i := range 300 {
				k := fmt.Sprintf("audit/e/%05d", i)
				v := bytes.Repeat([]byte{byte(i)}, i%700)
				rev, err := s.Batch(ctx, []store.Op{{Key: k, Value: v, ExpectRevision: 0}, {Key: "head", Value: []byte(k), ExpectRevision: -1}})
				if err != nil {
					t.Fatal(err)
				}
				want[k] = store.KV{Key: k, Value: v, Revision: rev}
				want["head"] = store.KV{Key: "head", Value: []byte(k), Revision: rev}
				if i%50 == 0 {
					s.flush() // some in bbolt, some only in the journal
				}
			}
			if err := s.Delete(ctx, "audit/e/00007"); err != nil {
				t.Fatal(err)
			}
			delete(want, "audit/e/00007")
			last, err := s.Put(ctx, "x", []byte("y"))
			if err != nil {
				t.Fatal(err)
			}
			want["x"] = store.KV{Key: "x", Value: []byte("y"), Revision: last}
			crashed := copyDir(t, dir)
			s.Close()

			var opts []Option
			if reopenJournal {
				opts = append(opts, WithJournal())
			}
			r, err := Open(filepath.Join(crashed, "ward.db"), opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			kvs, err := r.List(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(kvs) != len(want) {
				t.Errorf("after replay %d keys, want %d", len(kvs), len(want))
			}
			for _, kv := range kvs {
				w := want[kv.Key]
				if !bytes.Equal(kv.Value, w.Value) || kv.Revision != w.Revision {
					t.Errorf("after replay %q = rev %d, want rev %d (value equal: %v)", kv.Key, kv.Revision, w.Revision, bytes.Equal(kv.Value, w.Value))
				}
			}
			next, err := r.Put(ctx, "z", nil)
			if err != nil || next != last+1 {
				t.Errorf("first write after replay: rev %d, %v; want %d", next, err, last+1)
			}
			_, err = os.Stat(filepath.Join(crashed, "ward.db.journal0"))
			if exists := err == nil; exists != reopenJournal {
				t.Errorf("journal file exists after replay = %v, want %v", exists, reopenJournal)
			}
		})
	}
}

// TestJournalCleanCloseRemovesFiles: a clean Close leaves everything in
// bbolt and no journal behind.
func TestJournalCleanCloseRemovesFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.Put(t.Context(), "a", []byte("b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range journalPaths(path) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a clean close: %v, want it removed", p, err)
		}
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if kv, err := r.Get(context.Background(), "a"); err != nil || kv.Revision != rev {
		t.Errorf("Get after clean close = %+v, %v", kv, err)
	}
}

// TestJournalFileModes: the journal is readable by its owner only.
func TestJournalFileModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ward.db")
	s, err := Open(path, WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, p := range journalPaths(path) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s mode %o, want 600", p, m)
		}
	}
}

// crashedJournal writes n batches through a journaled store that is never
// flushed (the test holds the flush lock) and returns a copy of its
// directory as a crash leaves it, with the path of the journal holding the
// frames and the frames' offsets in it.
func crashedJournal(t *testing.T, n int) (dir, journal string, offs []int64) {
	t.Helper()
	return crashedJournalOn(t, t.TempDir(), n)
}

func crashedJournalOn(t *testing.T, src string, n int) (dir, journal string, offs []int64) {
	t.Helper()
	s, err := Open(filepath.Join(src, "ward.db"), WithJournal())
	if err != nil {
		t.Fatal(err)
	}
	s.jr.flushMu.Lock() // no flush: every frame stays needed
	active := s.jr.active
	for i := range n {
		off := s.jr.off
		if _, err := s.Batch(t.Context(), []store.Op{{Key: fmt.Sprintf("k/%03d", i), Value: bytes.Repeat([]byte{'v'}, 100+i), ExpectRevision: 0}}); err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	dir = copyDir(t, src)
	s.jr.flushMu.Unlock()
	s.Close()
	return dir, journalPaths(filepath.Join(dir, "ward.db"))[active], offs
}

func countKeys(t *testing.T, path string) (int, error) {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	kvs, err := s.List(t.Context(), "k/")
	return len(kvs), err
}

// TestJournalTornTail: a last frame cut short (the crash hit the write) is
// ignored, never misread; the frames before it are replayed.
func TestJournalTornTail(t *testing.T) {
	dir, jpath, offs := crashedJournal(t, 5)
	last := offs[4]
	// Cut the file in the middle of the last frame, then also as a torn
	// write into preallocated zeros leaves it: length and crc intact, the
	// payload's tail zero.
	b, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jpath, b[:last+40], 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := countKeys(t, filepath.Join(dir, "ward.db")); err != nil || n != 4 {
		t.Fatalf("after a truncated last frame: %d keys, %v; want 4", n, err)
	}

	dir, jpath, offs = crashedJournal(t, 5)
	b, _ = os.ReadFile(jpath)
	clear(b[offs[4]+60 : offs[4]+frameHeaderLen+104])
	os.WriteFile(jpath, b, 0o600)
	if n, err := countKeys(t, filepath.Join(dir, "ward.db")); err != nil || n != 4 {
		t.Fatalf("after a torn last frame: %d keys, %v; want 4", n, err)
	}
}

// TestJournalCorruptMiddleRefused: a damaged frame followed by valid newer
// ones is not a torn write: Open refuses, naming the file, and skips
// nothing.
func TestJournalCorruptMiddleRefused(t *testing.T) {
	for name, damage := range map[string]func(b []byte, off int64){
		"checksum": func(b []byte, off int64) { b[off+4] ^= 0xff },
		"payload":  func(b []byte, off int64) { b[off+frameHeaderLen+20] ^= 1 },
		"length":   func(b []byte, off int64) { b[off] = 0xff },
	} {
		t.Run(name, func(t *testing.T) {
			dir, jpath, offs := crashedJournal(t, 5)
			b, _ := os.ReadFile(jpath)
			damage(b, offs[2])
			os.WriteFile(jpath, b, 0o600)
			_, err := countKeys(t, filepath.Join(dir, "ward.db"))
			if err == nil || !errors.Is(err, errJournalCorrupt) || !strings.Contains(err.Error(), jpath) || !strings.Contains(err.Error(), "newer record follows") {
				t.Fatalf("Open with a damaged middle frame: %v; want a corruption error naming %s", err, jpath)
			}
		})
	}
}

// TestJournalUnknownFormatRefused: a journal of a newer format is not
// replayed (nor removed): Open says which file and what to do.
func TestJournalUnknownFormatRefused(t *testing.T) {
	dir, jpath, _ := crashedJournal(t, 2)
	b, _ := os.ReadFile(jpath)
	b[11] = 2 // format 2
	copy(b[12:16], journalHeaderFormat(2)[12:16])
	os.WriteFile(jpath, b, 0o600)
	_, err := countKeys(t, filepath.Join(dir, "ward.db"))
	if err == nil || !strings.Contains(err.Error(), jpath) || !strings.Contains(err.Error(), "format 2") || !strings.Contains(err.Error(), "ward version that wrote it") {
		t.Fatalf("Open with a format-2 journal: %v", err)
	}
	if _, err := os.Stat(jpath); err != nil {
		t.Fatalf("the unknown journal was removed: %v", err)
	}
	os.WriteFile(jpath, []byte("not a journal at all, but long enough"), 0o600)
	if _, err := countKeys(t, filepath.Join(dir, "ward.db")); err == nil || !strings.Contains(err.Error(), "is not a ward journal") {
		t.Fatalf("Open with a foreign file as journal: %v", err)
	}
}

// TestJournalGapRefused: a journal that does not continue the store (the
// store file replaced by an older copy) is refused, not applied.
func TestJournalGapRefused(t *testing.T) {
	src := t.TempDir()
	path := filepath.Join(src, "ward.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	old, _ := os.ReadFile(path) // revision 0
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Put(t.Context(), "a", nil) // revision 1: the journal starts at 2
	s.Close()
	dir, _, _ := crashedJournalOn(t, src, 3)
	os.WriteFile(filepath.Join(dir, "ward.db"), old, 0o600)
	_, err = countKeys(t, filepath.Join(dir, "ward.db"))
	if err == nil || !strings.Contains(err.Error(), "restored") {
		t.Fatalf("Open with a journal ahead of an older store file: %v", err)
	}
}

func journalHeaderFormat(v uint32) []byte {
	h := journalHeader()
	binary.BigEndian.PutUint32(h[8:], v)
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
	return h
}

// BenchmarkGroupCommit is one audit-like group commit: 22 new 600-byte
// events and an overwritten head per Batch, with and without the journal.
func BenchmarkGroupCommit(b *testing.B) {
	for _, journal := range []bool{false, true} {
		b.Run(fmt.Sprintf("journal=%v", journal), func(b *testing.B) {
			var opts []Option
			if journal {
				opts = append(opts, WithJournal())
			}
			s := openTemp(b, opts...)
			ctx := context.Background()
			val := bytes.Repeat([]byte{7}, 600)
			seq := 0
			for b.Loop() {
				ops := make([]store.Op, 0, 23)
				for range 22 {
					ops = append(ops, store.Op{Key: fmt.Sprintf("audit/e/%020d", seq), Value: val, ExpectRevision: 0})
					seq++
				}
				ops = append(ops, store.Op{Key: "audit/head", Value: val, ExpectRevision: -1})
				if _, err := s.Batch(ctx, ops); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestJournalReadsNeverGoBack: while flushes move the overlay into bbolt,
// a read never misses an acknowledged write (no moment where a value is
// in neither) nor sees an older one.
func TestJournalReadsNeverGoBack(t *testing.T) {
	s := openTemp(t, WithJournal())
	ctx := t.Context()
	const writers, rounds = 4, 300
	var acked [writers]atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(1); i <= rounds; i++ {
				if _, err := s.Put(ctx, fmt.Sprintf("w/%d", w), []byte(strconv.FormatInt(i, 10))); err != nil {
					t.Error(err)
					return
				}
				acked[w].Store(i)
			}
		}()
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { // flushes as often as it can
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				s.flush()
			}
		}
	}()
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for w := range writers {
				want := acked[w].Load()
				kv, err := s.Get(ctx, fmt.Sprintf("w/%d", w))
				if want == 0 {
					continue
				}
				got, _ := strconv.ParseInt(string(kv.Value), 10, 64)
				if err != nil || got < want {
					t.Errorf("Get w/%d = %d, %v after %d was acknowledged", w, got, err, want)
				}
			}
			want := make([]int64, writers)
			for w := range writers {
				want[w] = acked[w].Load()
			}
			kvs, err := s.List(ctx, "w/")
			if err != nil {
				t.Error(err)
				continue
			}
			seen := map[string]int64{}
			for _, kv := range kvs {
				seen[kv.Key], _ = strconv.ParseInt(string(kv.Value), 10, 64)
			}
			for w := range writers {
				if got := seen[fmt.Sprintf("w/%d", w)]; got < want[w] {
					t.Errorf("List: w/%d = %d after %d was acknowledged", w, got, want[w])
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
}
