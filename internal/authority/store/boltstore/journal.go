package boltstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/bbolt"

	"github.com/wardproject/ward/internal/authority/store"
)

// The journal (WithJournal; issue 17 gap 1). bbolt's commit costs two
// fdatasyncs (its pages, then its meta page) and its page writes: an audit
// group commit's store write took ~0.6 ms of the ~2.3 ms cycle of 64 unary
// callers. With the journal a write is one frame (journalfmt.go) written
// and fdatasynced into a file whose blocks are already allocated (one
// synced write, no metadata change), then applied to an in-memory overlay
// that reads see over bbolt; a flusher writes the overlay into bbolt in
// one larger transaction every flushEvery (or sooner when it holds
// flushOps entries or the journal flushBytes), and only after that
// transaction is synced is the file holding those frames reused. So a
// write returns only once its frame is on stable storage, exactly as it
// returned only once bbolt had synced it, and reads, conditions and
// revisions behave as without the journal (the conformance suite runs on
// both). On Open the frames newer than bbolt's revision are replayed into
// bbolt, whether or not the journal is enabled (a backup of a data
// directory whose authority was killed sees every write); a clean Close
// writes everything into bbolt and removes the files.
const (
	flushEvery = 50 * time.Millisecond
	flushOps   = 8192
	flushBytes = 8 << 20
	// journalInitial is how much of a new journal file is allocated
	// (zeros) at once; it grows by doubling when a frame does not fit.
	journalInitial = 256 << 10
	// maxOverlayEntries and maxOverlayBytes bound the overlay (and so the
	// memory and journal a write flood can pile up while flushes are
	// slow or fail): a write that finds it at either waits for a flush,
	// or fails if the last flush failed (bbolt refuses the writes).
	// Bytes count the frames the overlay's values keep alive.
	maxOverlayEntries = 8 * flushOps
	maxOverlayBytes   = 8 * flushBytes
	// maxBehindBytes bounds the journal file while flushes fail: rewrites
	// of a few keys keep the overlay small but each adds a frame, and
	// Open reads the files whole.
	maxBehindBytes = 8 * flushBytes
)

// journalPaths are the two journal files of the bbolt file at path.
func journalPaths(path string) [2]string {
	return [2]string{path + ".journal0", path + ".journal1"}
}

// jfile is one journal file.
type jfile struct {
	f    *os.File
	path string
	size int64 // allocated (written) length
}

// ovEntry is one write in the overlay: the newest value of a key not yet
// in bbolt (del: deleted).
type ovEntry struct {
	rev int64
	val []byte
	del bool
	fr  *ovFrame // the frame val is part of
}

// ovFrame is one frame's buffer, counted in Store.ovBytes while an overlay
// entry refers to it (under ovMu).
type ovFrame struct {
	size int64
	refs int
}

// ovUnref drops e's hold on its frame (under ovMu held for writing).
func (s *Store) ovUnref(e *ovEntry) {
	if e.fr.refs--; e.fr.refs == 0 {
		s.ovBytes -= e.fr.size
	}
}

// journal is the write-ahead side of a Store with WithJournal.
type journal struct {
	files  [2]jfile
	active int   // the file frames go to (under writeMu)
	off    int64 // where the next frame goes in it (under writeMu)
	rev    int64 // the store's revision, bbolt's plus the overlay's (under writeMu)
	broken error // set when a frame's write failed: every later write fails (under writeMu)
	// behind is set while a failed flush left the other file holding
	// frames bbolt lacks: flushes then do not switch files (under writeMu).
	behind bool
	// flushErr is the last flush's error, nil once one succeeds (under
	// writeMu); maxEntries and maxBytes bound the overlay, maxBehind the
	// journal file while flushes fail (tests lower them).
	flushErr            error
	maxEntries          int
	maxBytes, maxBehind int64
	maxFrame            int // the largest payload of one frame (maxFramePayload)

	flushMu   sync.Mutex    // one flush at a time (the switch needs the previous one done)
	kick      chan struct{} // wakes the flusher early
	stop      chan struct{}
	stopped   chan struct{}
	flushedMu sync.Mutex
	flushed   chan struct{} // closed and replaced after each flush (tests)
}

// openJournal replays the journal files of path into db (whatever their
// state) and, if keep, opens them for writing; otherwise it removes them.
func openJournal(db *bbolt.DB, path string, keep bool) (*journal, error) {
	paths := journalPaths(path)
	floor, err := bboltRevision(db)
	if err != nil {
		return nil, err
	}
	owner, err := fileOwner(path)
	if err != nil {
		return nil, err
	}
	var frames []frame
	for _, p := range paths {
		b, err := readJournalFile(p, owner)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		fs, err := parseJournal(p, b, floor)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			if f.rev > floor {
				frames = append(frames, f)
			}
		}
	}
	if err := replay(db, paths, floor, frames); err != nil {
		return nil, err
	}
	if !keep {
		for _, p := range paths {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("removing journal %s after replaying it: %w", p, err)
			}
		}
		return nil, nil
	}
	j := &journal{kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}), flushed: make(chan struct{}),
		maxEntries: maxOverlayEntries, maxBytes: maxOverlayBytes, maxBehind: maxBehindBytes,
		maxFrame: maxFramePayload}
	if j.rev, err = bboltRevision(db); err != nil {
		return nil, err
	}
	for i, p := range paths {
		if j.files[i], err = createJournalFile(p, owner); err != nil {
			j.closeFiles()
			return nil, err
		}
	}
	// The files' directory entries must be durable before any frame is
	// acknowledged.
	if err := syncDir(filepath.Dir(path)); err != nil {
		j.closeFiles()
		return nil, err
	}
	j.off = journalBlock
	return j, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

func bboltRevision(db *bbolt.DB) (int64, error) {
	var rev int64
	err := db.View(func(tx *bbolt.Tx) error {
		rev = int64(binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(keyRevision)))
		return nil
	})
	return rev, err
}

// replay writes frames (revisions above floor) into db in one synced
// transaction. They must continue bbolt's revisions without a gap.
func replay(db *bbolt.DB, paths [2]string, floor int64, frames []frame) error {
	if len(frames) == 0 {
		return nil
	}
	slices.SortFunc(frames, func(a, b frame) int { return cmp.Compare(a.rev, b.rev) })
	next := floor + 1
	for _, f := range frames {
		if f.rev != next {
			return fmt.Errorf("journal %s / %s: the store holds revisions up to %d but the journal's next record is revision %d (was the store file replaced or restored from a copy?): %w; if the store was restored on purpose, move the journal files out of the data directory",
				paths[0], paths[1], next-1, f.rev, errJournalCorrupt)
		}
		next++
	}
	slog.Default().Info("boltstore: replaying the journal left by a process that did not close the store",
		"journal", paths[0], "records", len(frames), "from_revision", frames[0].rev, "to_revision", frames[len(frames)-1].rev)
	return db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV)
		for _, f := range frames {
			if err := applyOps(b, f.rev, f.ops); err != nil {
				return fmt.Errorf("replaying journal revision %d: %w", f.rev, err)
			}
		}
		return tx.Bucket(bucketMeta).Put(keyRevision, u64(uint64(frames[len(frames)-1].rev)))
	})
}

// applyOps writes ops at rev into b.
func applyOps(b *bbolt.Bucket, rev int64, ops []store.Event) error {
	for _, op := range ops {
		if op.Type == store.EventDelete {
			if err := b.Delete([]byte(op.Key)); err != nil {
				return err
			}
			continue
		}
		if err := b.Put([]byte(op.Key), encodeEntry(rev, op.Value)); err != nil {
			return err
		}
	}
	return nil
}

func encodeEntry(rev int64, val []byte) []byte {
	v := make([]byte, 8+len(val))
	binary.BigEndian.PutUint64(v, uint64(rev))
	copy(v[8:], val)
	return v
}

// fileOwner returns the owner of the bbolt file at path.
func fileOwner(path string) (uint32, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%s: no owner", path)
	}
	return st.Uid, nil
}

// openJournalFile opens a journal file without following a symbolic link
// and checks it is what ward creates: a regular file with one link, owned
// by owner (the bbolt file's owner) or by this process's user. Anything else was planted by whoever
// could write the directory (a link to another file would have ward read
// or overwrite it, a file of another user would let that user read the
// journal): it is refused, never read, written or removed.
func openJournalFile(p string, flag int, owner uint32) (*os.File, error) {
	f, err := os.OpenFile(p, flag|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("journal %s is a symbolic link, not a file ward created: remove it (and check who can write %s)", p, filepath.Dir(p))
		}
		return nil, fmt.Errorf("opening journal %s: %w", p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening journal %s: %w", p, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("journal %s is not a regular file (%v)", p, fi.Mode().Type())
	case st == nil || st.Nlink != 1:
		err = fmt.Errorf("journal %s has other links (hard-linked to another file)", p)
	case st.Uid != owner && int(st.Uid) != os.Geteuid():
		err = fmt.Errorf("journal %s is owned by uid %d, the store file by uid %d and this process runs as uid %d", p, st.Uid, owner, os.Geteuid())
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: ward did not create it; remove it (and check who can write %s)", err, filepath.Dir(p))
	}
	return f, nil
}

// readJournalFile reads a journal file (openJournalFile's checks).
func readJournalFile(p string, owner uint32) ([]byte, error) {
	f, err := openJournalFile(p, os.O_RDONLY, owner)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading journal %s: %w", p, err)
	}
	return b, nil
}

// createJournalFile opens (creating, mode 0600) a journal file, writes its
// header if it has none and makes sure its first journalInitial bytes are
// written blocks. What is past the header stays (frames bbolt holds).
func createJournalFile(p string, owner uint32) (jfile, error) {
	f, err := openJournalFile(p, os.O_RDWR|os.O_CREATE, owner)
	if err != nil {
		return jfile{}, err
	}
	jf := jfile{f: f, path: p}
	fail := func(err error) (jfile, error) {
		f.Close()
		return jfile{}, fmt.Errorf("preparing journal %s: %w", p, err)
	}
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	jf.size = st.Size()
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := jf.grow(journalInitial); err != nil {
		return fail(err)
	}
	if _, err := f.WriteAt(journalHeader(), 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	return jf, nil
}

var zeroChunk [64 << 10]byte

// grow writes zeros from the allocated end up to at least n bytes.
func (jf *jfile) grow(n int64) error {
	for jf.size < n {
		k := min(int64(len(zeroChunk)), n-jf.size)
		if _, err := jf.f.WriteAt(zeroChunk[:k], jf.size); err != nil {
			return err
		}
		jf.size += k
	}
	return nil
}

// append writes buf (one frame) at off and syncs it: pwrite and fdatasync
// (an O_DSYNC file measured 1.4-1.5x slower per group here, under load).
// A failed growth (disk full) wrote nothing where a frame goes: the write
// fails but the journal stays usable (grown is false). Once the frame's
// pwrite or fdatasync failed, it is not.
func (jf *jfile) append(buf []byte, off int64) (grown bool, err error) {
	if end := off + int64(len(buf)); end > jf.size {
		if err := jf.grow(max(2*jf.size, alignUp(end))); err != nil {
			return false, err
		}
	}
	if _, err := jf.f.WriteAt(buf, off); err != nil {
		return true, err
	}
	return true, fdatasync(jf.f)
}

func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

func (j *journal) closeFiles() {
	for _, jf := range j.files {
		if jf.f != nil {
			jf.f.Close()
		}
	}
}

// jwrite is write with the journal: plan runs against the overlay over
// bbolt, its changes go into one synced frame and then into the overlay.
func (s *Store) jwrite(plan planFunc) (int64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	j := s.jr
	if j.broken != nil {
		return 0, j.broken
	}
	if err := s.waitRoom(); err != nil {
		return 0, err
	}
	rev := j.rev + 1
	var evs []store.Event
	err := s.readView(func(revOf func(string) (int64, error)) error {
		var err error
		evs, err = plan(revOf, rev)
		return err
	})
	if err != nil {
		return 0, err
	}
	if len(evs) == 0 {
		return j.rev, nil
	}
	n := frameSize(evs)
	if n > frameHeaderLen+j.maxFrame {
		// Replay would refuse a longer frame (a torn or corrupt record):
		// it is never acknowledged.
		return 0, fmt.Errorf("boltstore: a write of %d ops and about %d bytes is larger than a journal record holds (%d bytes); split it; nothing was written", len(evs), n, j.maxFrame)
	}
	buf, valAt := appendFrame(make([]byte, 0, n), rev, evs, make([]int, 0, len(evs)))
	if grown, err := j.files[j.active].append(buf, j.off); err != nil {
		if !grown {
			return 0, fmt.Errorf("boltstore: journal %s: allocating room for a write: %w; nothing was written", j.files[j.active].path, err)
		}
		// The frame may be partly on disk, and after a failed fdatasync
		// the page cache cannot be trusted: no write succeeds any more.
		j.broken = fmt.Errorf("boltstore: journal %s: a write failed (%v): the store accepts no more writes; restart the authority (the journal is replayed on open)", j.files[j.active].path, err)
		return 0, j.broken
	}
	j.off = alignUp(j.off + int64(len(buf)))
	// The overlay keeps the frame's copies of the values (buf is not
	// written again); the events handed to watchers keep the caller's.
	s.ovMu.Lock()
	puts := 0
	fr := &ovFrame{size: int64(cap(buf)), refs: len(evs)}
	s.ovBytes += fr.size
	for _, ev := range evs {
		e := &ovEntry{rev: rev, del: ev.Type == store.EventDelete, fr: fr}
		if !e.del {
			i := valAt[puts]
			puts++
			e.val = buf[i : i+len(ev.Value) : i+len(ev.Value)]
		}
		if old, ok := s.overlay[ev.Key]; ok {
			s.ovUnref(old) // one under flush stays until it is in bbolt
		}
		s.overlay[ev.Key] = e
	}
	entries := len(s.overlay)
	s.ovMu.Unlock()
	j.rev = rev
	s.publish(evs)
	if entries >= flushOps || j.off >= flushBytes {
		select {
		case j.kick <- struct{}{}:
		default:
		}
	}
	return rev, nil
}

// waitRoom returns once the overlay is below its bounds (under writeMu,
// which it releases while it waits for a flush), or an error if the
// journal broke meanwhile or the last flush failed: then bbolt refuses
// the overlay, and a write flood must not pile up in memory behind it
// (nor in the journal file, which is not switched then).
func (s *Store) waitRoom() error {
	j := s.jr
	for {
		if j.flushErr != nil && j.off >= j.maxBehind {
			return fmt.Errorf("boltstore: %s: the journal holds %d bytes of writes bbolt refuses (%v); no more are taken until a flush succeeds; nothing was written",
				s.path, j.off, j.flushErr)
		}
		s.ovMu.RLock()
		n, size := len(s.overlay)+len(s.flushing), s.ovBytes
		s.ovMu.RUnlock()
		if n < j.maxEntries && size < j.maxBytes {
			return nil
		}
		if j.flushErr != nil {
			return fmt.Errorf("boltstore: %s: %d writes (%d bytes) wait in the journal for bbolt, which refuses them (%v); no more are taken until a flush succeeds; nothing was written",
				s.path, n, size, j.flushErr)
		}
		j.flushedMu.Lock()
		flushed := j.flushed
		j.flushedMu.Unlock()
		select {
		case j.kick <- struct{}{}:
		default:
		}
		s.writeMu.Unlock()
		<-flushed
		s.writeMu.Lock()
		if j.broken != nil {
			return j.broken
		}
	}
}

// frameSize bounds the encoded size of a frame of evs.
func frameSize(evs []store.Event) int {
	n := frameHeaderLen + binary.MaxVarintLen64
	for _, ev := range evs {
		n += 1 + 2*binary.MaxVarintLen64 + len(ev.Key) + len(ev.Value)
	}
	return n
}

// readView runs fn with the revision of a key as the store holds it: the
// overlay's, else bbolt's. The overlay is read-held while the bbolt
// transaction starts, so no flush can move an entry from one to the other
// unseen (the flusher drops entries only after its transaction committed).
func (s *Store) readView(fn func(revOf func(string) (int64, error)) error) error {
	return s.view(func(get func(string) ([]byte, int64, bool, error)) error {
		return fn(func(key string) (int64, error) {
			_, rev, ok, err := get(key)
			if !ok || err != nil {
				return 0, err
			}
			return rev, nil
		})
	})
}

// view runs fn with get, which returns a key's value and revision as the
// store holds it (overlay over bbolt); ok is false for a missing key.
func (s *Store) view(fn func(get func(string) ([]byte, int64, bool, error)) error) error {
	if s.jr == nil {
		return s.db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketKV)
			return fn(func(key string) ([]byte, int64, bool, error) { return bboltGet(b, key) })
		})
	}
	s.ovMu.RLock()
	tx, err := s.db.Begin(false)
	if err != nil {
		s.ovMu.RUnlock()
		return err
	}
	defer tx.Rollback()
	defer s.ovMu.RUnlock()
	b := tx.Bucket(bucketKV)
	return fn(func(key string) ([]byte, int64, bool, error) {
		e, ok := s.overlay[key]
		if !ok {
			e, ok = s.flushing[key]
		}
		if ok {
			if e.del {
				return nil, 0, false, nil
			}
			return e.val, e.rev, true, nil
		}
		return bboltGet(b, key)
	})
}

func bboltGet(b *bbolt.Bucket, key string) ([]byte, int64, bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return nil, 0, false, nil
	}
	rev, val, err := decode(key, raw)
	return val, rev, err == nil, err
}

// jlist is List with the journal: bbolt's entries under prefix with the
// overlay's put over them and its deletions taken out.
func (s *Store) jlist(prefix string) ([]store.KV, error) {
	s.ovMu.RLock()
	ov := make(map[string]*ovEntry)
	for _, m := range [2]map[string]*ovEntry{s.flushing, s.overlay} { // the newer last
		for k, e := range m {
			if strings.HasPrefix(k, prefix) {
				ov[k] = e
			}
		}
	}
	tx, err := s.db.Begin(false)
	s.ovMu.RUnlock()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var out []store.KV
	c := tx.Bucket(bucketKV).Cursor()
	p := []byte(prefix)
	for k, raw := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, raw = c.Next() {
		if _, ok := ov[string(k)]; ok {
			continue
		}
		rev, val, err := decode(string(k), raw)
		if err != nil {
			return nil, err
		}
		out = append(out, store.KV{Key: string(k), Value: bytes.Clone(val), Revision: rev})
	}
	if len(ov) == 0 {
		return out, nil
	}
	for k, e := range ov {
		if !e.del {
			out = append(out, store.KV{Key: k, Value: bytes.Clone(e.val), Revision: e.rev})
		}
	}
	slices.SortFunc(out, func(a, b store.KV) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// flusher writes the overlay into bbolt every flushEvery or when kicked,
// and once more when stopped.
func (s *Store) flusher() {
	j := s.jr
	defer close(j.stopped)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			s.flush()
			return
		case <-t.C:
		case <-j.kick:
		}
		s.flush()
	}
}

// flush moves the overlay into bbolt: it switches the journal to the other
// file (whose frames bbolt already holds: the previous flush synced them)
// and the overlay to a fresh one, the old one becoming flushing (reads see
// both: a constant-time hand-off under the write lock), writes flushing in
// one bbolt transaction and then drops it. If bbolt refuses it, its entries
// go back under the overlay (those written again since stay newer).
func (s *Store) flush() {
	j := s.jr
	j.flushMu.Lock()
	defer j.flushMu.Unlock()
	s.writeMu.Lock()
	if j.broken != nil || len(s.overlay) == 0 {
		s.writeMu.Unlock()
		s.noteFlushed()
		return
	}
	rev := j.rev
	s.ovMu.Lock()
	entries := s.overlay
	s.flushing, s.overlay = entries, make(map[string]*ovEntry, len(entries))
	s.ovMu.Unlock()
	if !j.behind {
		j.active = 1 - j.active
		j.off = journalBlock
	}
	s.writeMu.Unlock()

	snap := make([]string, 0, len(entries))
	for k := range entries {
		snap = append(snap, k)
	}
	slices.Sort(snap)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		s.prezero(tx.Size())
		b := tx.Bucket(bucketKV)
		ops := make([]store.Op, 0, len(snap))
		for _, k := range snap {
			if !entries[k].del {
				ops = append(ops, store.Op{Key: k})
			}
		}
		if appends(b, ops) {
			b.FillPercent = appendFillPercent
		}
		for _, k := range snap {
			e := entries[k]
			if e.del {
				if err := b.Delete([]byte(k)); err != nil {
					return err
				}
				continue
			}
			if err := b.Put([]byte(k), encodeEntry(e.rev, e.val)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keyRevision, u64(uint64(rev)))
	})
	if err != nil {
		// The file switched from still holds frames bbolt lacks: it must
		// not be written again until a flush succeeds (the next ones
		// retry without switching). Writes go on into the journal.
		s.writeMu.Lock()
		j.behind = true
		j.flushErr = err
		s.ovMu.Lock()
		for k, e := range entries {
			if _, ok := s.overlay[k]; ok {
				s.ovUnref(e)
			} else {
				s.overlay[k] = e
			}
		}
		s.flushing = nil
		s.ovMu.Unlock()
		s.writeMu.Unlock()
		slog.Default().Error("boltstore: writing the journal into bbolt failed; the writes stay in the journal and the flush is retried",
			"path", s.path, "err", err)
		s.noteFlushed()
		return
	}
	s.writeMu.Lock()
	j.behind = false
	j.flushErr = nil
	s.writeMu.Unlock()
	s.ovMu.Lock()
	for _, e := range entries {
		s.ovUnref(e)
	}
	s.flushing = nil
	s.ovMu.Unlock()
	s.noteFlushed()
}

func (s *Store) noteFlushed() {
	j := s.jr
	j.flushedMu.Lock()
	close(j.flushed)
	j.flushed = make(chan struct{})
	j.flushedMu.Unlock()
}

// closeJournal stops the flusher (which writes everything into bbolt) and,
// if the journal is then empty, removes its files.
func (s *Store) closeJournal() error {
	j := s.jr
	close(j.stop)
	<-j.stopped
	s.writeMu.Lock()
	broken := j.broken
	s.writeMu.Unlock()
	j.closeFiles()
	if broken != nil || len(s.overlay) != 0 || len(s.flushing) != 0 {
		return nil // replayed on the next open
	}
	var errs []error
	for _, jf := range j.files {
		if err := os.Remove(jf.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
