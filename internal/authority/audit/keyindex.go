package audit

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
)

// Field names an event uses to say which revision of a stored record it
// produced. The KMS sets them on every event of a key-changing operation
// that succeeded, so the signed log is the memory of each key record's
// newest revision (see RevisionIndex).
const (
	FieldRecordRevision   = "record_revision"
	FieldRecordDigest     = "record_digest"
	FieldDestroyedVersion = "destroyed_version"
)

// Mark is the newest revision of one object's stored record according to
// the log: Revision and Digest come from the last successful event that
// named them, Seq is that event's sequence number, Destroyed lists every
// version a successful event ever reported destroyed.
type Mark struct {
	Revision  uint64
	Digest    string
	Seq       uint64
	Operation string
	Destroyed []uint32
}

// RevisionIndex is a per-key map of the newest record revision the audit
// log holds, rebuilt by scanning the log once and kept current by reading
// only the events appended since (by this authority or another one sharing
// the store). A record older than its Mark was rolled back.
//
// The index is only as good as the log it reads: an attacker who rolls
// back a key record and the audit tail together (same store) defeats it;
// clients that remember checkpoints (`ward audit verify` keeps the newest
// one it has seen) catch that half.
type RevisionIndex struct {
	log *Log

	mu    sync.Mutex
	next  uint64 // events [0, next) are indexed
	marks map[string]*Mark
}

// NewRevisionIndex returns an empty index over l; the first Latest scans
// the whole log.
func NewRevisionIndex(l *Log) *RevisionIndex {
	return &RevisionIndex{log: l, marks: map[string]*Mark{}}
}

var recordRevisionNeedle = []byte(`"` + FieldRecordRevision + `"`)

// Sync reads the events appended since the last Sync. An event that cannot
// be read stops it with an error (fail closed: the index cannot say what
// that event recorded); the stored log being shorter than what was already
// indexed is reported as a rollback of the log.
func (x *RevisionIndex) Sync(ctx context.Context) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.syncLocked(ctx)
}

func (x *RevisionIndex) syncLocked(ctx context.Context) error {
	h, _, err := x.log.loadHead(ctx)
	if err != nil {
		return fmt.Errorf("%w; key records cannot be checked against the audit log", err)
	}
	size := uint64(0)
	if h != nil {
		size = h.Size
	}
	if size < x.next {
		x.log.noteRollback(fmt.Sprintf("stored audit head has %d events but %d were already read from it", size, x.next))
		return fmt.Errorf("the stored audit log went back from %d to %d events (rolled back or truncated in storage): key records cannot be checked against it; run `ward audit verify`", x.next, size)
	}
	if size == x.next {
		return nil
	}
	return x.log.readRange(ctx, x.next, size, func(r Record) error {
		if r.Err != nil {
			return fmt.Errorf("reading the audit log to check key record revisions: %w; run `ward audit verify`", r.Err)
		}
		x.next = r.Seq + 1
		if !bytes.Contains(r.Leaf, recordRevisionNeedle) && !bytes.Contains(r.Leaf, []byte(FieldDestroyedVersion)) {
			return nil
		}
		ev, err := DecodeEvent(r.Leaf)
		if err != nil {
			return fmt.Errorf("audit record %d: %w; run `ward audit verify`", r.Seq, err)
		}
		x.add(ev)
		return nil
	})
}

func (x *RevisionIndex) add(ev Event) {
	if ev.Key == "" || ev.Result != ResultOK {
		return
	}
	m := x.marks[ev.Key]
	if d, ok := ev.Fields[FieldDestroyedVersion]; ok {
		if v, err := strconv.ParseUint(d, 10, 32); err == nil {
			if m == nil {
				m = &Mark{}
				x.marks[ev.Key] = m
			}
			if !slices.Contains(m.Destroyed, uint32(v)) {
				m.Destroyed = append(m.Destroyed, uint32(v))
			}
		}
	}
	rs, ok := ev.Fields[FieldRecordRevision]
	if !ok {
		return
	}
	rev, err := strconv.ParseUint(rs, 10, 64)
	if err != nil {
		return
	}
	if m == nil {
		m = &Mark{}
		x.marks[ev.Key] = m
	}
	// Revisions only grow; with several authorities the log order may
	// interleave, so keep the highest.
	if rev >= m.Revision {
		m.Revision, m.Digest, m.Seq, m.Operation = rev, ev.Fields[FieldRecordDigest], ev.Seq, ev.Operation
	}
}

// Latest syncs with the stored log and returns key's Mark (ok false if the
// log never recorded a revision of it).
func (x *RevisionIndex) Latest(ctx context.Context, key string) (Mark, bool, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.syncLocked(ctx); err != nil {
		return Mark{}, false, err
	}
	m, ok := x.markLocked(key)
	return m, ok, nil
}

// Synced syncs with the stored log once and returns a lookup of the marks
// that does not read the log again: for checking many records read before
// the call (a listing) against one reading of the log's head instead of
// one each. A lookup sees the marks as of the sync or later.
func (x *RevisionIndex) Synced(ctx context.Context) (func(key string) (Mark, bool), error) {
	if err := x.Sync(ctx); err != nil {
		return nil, err
	}
	return func(key string) (Mark, bool) {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.markLocked(key)
	}, nil
}

func (x *RevisionIndex) markLocked(key string) (Mark, bool) {
	m, ok := x.marks[key]
	if !ok {
		return Mark{}, false
	}
	out := *m
	out.Destroyed = slices.Clone(m.Destroyed)
	return out, true
}
