package audit

import "time"

// lingerCommits bounds the committer's wait for returning callers, in
// commit times after the commit that released them (and by maxLinger).
const lingerCommits = 3

// lingerWindow is how long the committer waits, after a commit, for the
// callers it released (see run). The first window is one commit time long,
// as a caller appending again at once returns within it; while callers keep
// arriving (the queue grew during the window that just ran out) it waits one
// more commit time, up to lingerCommits of them and maxLinger after the
// commit. Through the API the callers come back slowly and spread out
// (issue 17): the longer wait, taken only while they keep coming, makes the
// groups bigger and the commits fewer. A window in which nobody came closes
// the group, so callers that do not come back cost one commit time, as
// before; the wait still ends as soon as as many events are queued as the
// previous group's active callers, and a lone caller never waits.
type lingerWindow struct {
	deadline, limit time.Time
	step            time.Duration // the last commit's time (at most maxLinger)
	seen            int           // events queued when the current window began
}

// newLingerWindow is the window after a commit that ended at end, took
// took, and left queued events in the queue.
func newLingerWindow(end time.Time, took time.Duration, queued int) lingerWindow {
	step := min(max(took, 0), maxLinger)
	return lingerWindow{
		deadline: end.Add(step),
		limit:    end.Add(min(lingerCommits*step, maxLinger)),
		step:     step,
		seen:     queued,
	}
}

// extend is called when the window ran out with queued events in the
// queue: if some arrived during it and the limit is not reached, it moves
// the deadline one commit time on (at most to the limit) and says so;
// otherwise the group closes.
func (w *lingerWindow) extend(queued int) bool {
	if queued <= w.seen || !w.deadline.Before(w.limit) {
		return false
	}
	w.seen = queued
	w.deadline = w.deadline.Add(w.step)
	if w.deadline.After(w.limit) {
		w.deadline = w.limit
	}
	return true
}

// nextActive is how many callers the committer waits for after a commit:
// the events it released plus those queued during it (now), or, as the
// callers come back spread out and one group's count underestimates them,
// the previous count (prev) less an eighth (at least one) when that is
// more. short says the last group closed on a window in which nobody came:
// fewer callers are left, so now is taken as it is.
func nextActive(prev, now int, short bool) int {
	if short {
		return now
	}
	return max(now, prev-(prev+7)/8)
}
