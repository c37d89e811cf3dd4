package audit

import (
	"sync/atomic"
	"time"
)

// CommitStats says where appended events spent their time, summed since
// the Log opened (issue 17: where a unary audited call's wall time goes).
// Per event: Queued (from Append queuing it until its group closed) and
// Resumed (from the committer sending its result until Append returned:
// the caller's wait for a core). Per group: Lingered (the committer's
// wait for returning callers before closing it: see run), Committed (the
// whole commit: building leaves, tree and head, storing, releasing) and,
// within that, Stored (the store batches alone: for bbolt its
// transaction with page writes and fdatasyncs). Divide by Events or
// Groups.
type CommitStats struct {
	Events, Groups              uint64
	Queued, Resumed             time.Duration
	Lingered, Committed, Stored time.Duration
}

type commitStats struct {
	events, groups                               atomic.Uint64
	queued, resumed, lingered, committed, stored atomic.Int64
}

// closed counts group as closed at now, after the committer lingered from
// lingerFrom.
func (s *commitStats) closed(group []*pending, lingerFrom, now time.Time) {
	var q time.Duration
	for _, p := range group {
		q += now.Sub(p.queued)
	}
	s.queued.Add(int64(q))
	s.lingered.Add(int64(now.Sub(lingerFrom)))
	s.events.Add(uint64(len(group)))
	s.groups.Add(1)
}

// CommitStats returns where appended events spent their time so far.
func (l *Log) CommitStats() CommitStats {
	s := &l.stats
	return CommitStats{
		Events: s.events.Load(), Groups: s.groups.Load(),
		Queued: time.Duration(s.queued.Load()), Resumed: time.Duration(s.resumed.Load()),
		Lingered: time.Duration(s.lingered.Load()), Committed: time.Duration(s.committed.Load()),
		Stored: time.Duration(s.stored.Load()),
	}
}
