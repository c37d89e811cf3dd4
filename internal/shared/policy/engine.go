package policy

import "sync/atomic"

// Engine holds the current Set of an enforcement point and swaps it
// atomically when a new version arrives. An Engine without a Set denies
// everything (fail closed). It is safe for concurrent use; Decide takes no
// lock.
type Engine struct {
	cur atomic.Pointer[Set]
}

// NewEngine returns an Engine holding no Set (denying everything).
func NewEngine() *Engine { return &Engine{} }

// Store makes s current; nil removes the current Set, so every decision
// denies until a valid Set is stored again.
func (e *Engine) Store(s *Set) { e.cur.Store(s) }

// StoreIfNewer makes s current only if no Set is loaded or s.Version() is
// greater than the current version, so a late, out-of-order push cannot roll
// policy back. It reports whether s was stored. (A rollback is published by
// the authority as a new version with the old content.)
func (e *Engine) StoreIfNewer(s *Set) bool {
	if s == nil {
		return false
	}
	for {
		old := e.cur.Load()
		if old != nil && s.version <= old.version {
			return false
		}
		if e.cur.CompareAndSwap(old, s) {
			return true
		}
	}
}

// Current returns the current Set, or nil when none is loaded.
func (e *Engine) Current() *Set { return e.cur.Load() }

// Status reports the current version and whether a valid Set is loaded (for
// a proxy's status and readiness).
func (e *Engine) Status() (version uint64, loaded bool) {
	s := e.cur.Load()
	if s == nil {
		return 0, false
	}
	return s.version, true
}

// noPolicy is the decision of an Engine without a Set.
func noPolicy() Decision {
	return Decision{Cause: CauseNoPolicy, Reasons: []string{ReasonNoPolicy}}
}

// Decide answers req against the current Set, denying with ReasonNoPolicy
// when there is none.
func (e *Engine) Decide(req Request) Decision {
	s := e.cur.Load()
	if s == nil {
		return noPolicy()
	}
	return s.Decide(req)
}

// Explain explains req against the current Set.
func (e *Engine) Explain(req Request) Explanation {
	s := e.cur.Load()
	if s == nil {
		return Explanation{Decision: noPolicy()}
	}
	return s.Explain(req)
}
