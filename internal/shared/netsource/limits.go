package netsource

import "sync"

// Refusal says why Limits.Acquire refused a connection.
type Refusal int

const (
	// Accepted: the connection was counted.
	Accepted Refusal = iota
	// OverOpen: the source already holds its maximum of open connections.
	OverOpen
	// OverPending: the source already holds its maximum of pending
	// connections (accepted but not past their first bounded phase: the
	// proxy's TLS handshake, the gateway's ClientHello).
	OverPending
)

// Limits counts the open and the pending connections of each source (Key),
// so that one host cannot take every slot of a listener's total limit, nor
// hold them with idle connections that never finish their first phase. It
// is safe for concurrent use.
type Limits struct {
	maxOpen, maxPending int

	mu sync.Mutex
	m  map[string]*count
}

type count struct{ open, pending int }

// NewLimits bounds each source to maxOpen open connections of which at
// most maxPending are pending.
func NewLimits(maxOpen, maxPending int) *Limits {
	return &Limits{maxOpen: maxOpen, maxPending: maxPending, m: map[string]*count{}}
}

// Acquire counts a new connection of key as open and pending, or returns
// why it is refused (nothing is counted then).
func (l *Limits) Acquire(key string) Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := l.m[key]
	if sc == nil {
		sc = &count{}
		l.m[key] = sc
	}
	switch {
	case sc.pending >= l.maxPending:
		return OverPending
	case sc.open >= l.maxOpen:
		return OverOpen
	}
	sc.open++
	sc.pending++
	return Accepted
}

// EndPending ends the pending phase of a connection of key (call it once
// per connection; extra calls never go below zero).
func (l *Limits) EndPending(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sc := l.m[key]; sc != nil && sc.pending > 0 {
		sc.pending--
	}
}

// Release ends an open connection of key (its pending phase must have
// ended already).
func (l *Limits) Release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := l.m[key]
	if sc == nil {
		return
	}
	if sc.open > 0 {
		sc.open--
	}
	if sc.open == 0 && sc.pending == 0 {
		delete(l.m, key)
	}
}
