// Package ha runs several authorities on one etcd as one service: it
// registers each unsealed authority as a member (under a lease) and elects
// one leader among them with etcd's concurrency election, on a lease with
// a short TTL. The singleton jobs (scheduled key and CA rotation, the
// federation refresh and channels, the anomaly detector, purges) run only
// inside the leader's context, which ends before another member can be
// elected: at the latest when the lease could have expired in etcd
// (counted from the moment the last successful renewal was sent), and
// every write those jobs make through the etcd store is fenced on the
// election key's revision (etcdstore.WithFence). On a single authority
// (bbolt) Local makes it always the leader.
package ha

import (
	"context"
	"fmt"
	"os"
	"time"
)

// DefaultLeaseTTL is the lease of membership and leadership: a leader that
// dies is replaced within it (plus the election round trip).
const DefaultLeaseTTL = 10 * time.Second

// Member is one authority as the others see it.
type Member struct {
	// Name identifies the authority (storage.etcd.member_name, default
	// host name and process id).
	Name string `json:"name"`
	// Address is where clients reach it (the Node API address), if any.
	Address string `json:"address,omitempty"`
	// Version is the authority's ward version.
	Version string `json:"version"`
	// Since is when it joined (unsealed).
	Since time.Time `json:"since"`
}

// Status is the view of the cluster from one member.
type Status struct {
	// Mode is "etcd" (elected) or "single" (one authority, always leader).
	Mode     string
	Self     Member
	IsLeader bool
	// Leader is the elected member (zero Name when none is elected now).
	Leader Member
	// Term is the election key's creation revision (grows with each new
	// leadership); 0 when there is none, or in single mode.
	Term    int64
	Members []Member
	// LeaseTTL is the membership and leadership lease.
	LeaseTTL time.Duration
}

// Coordinator elects the leader among the authorities sharing a store.
type Coordinator interface {
	// Run registers the member and campaigns until ctx ends. Each time it
	// becomes the leader it calls lead with a context that ends when the
	// leadership ends (before another member can be elected), and waits
	// for lead to return before it campaigns again.
	Run(ctx context.Context, lead func(ctx context.Context)) error
	// Status reports the members and the leader.
	Status(ctx context.Context) (Status, error)
}

// DefaultName is the member name used when none is configured.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "authority"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// Connectivity is implemented by coordinators that can be cut off from
// the shared store (Etcd).
type Connectivity interface {
	Connected() bool
	// Lost returns a channel closed once the member is cut off (already
	// closed when it is now).
	Lost() <-chan struct{}
}

// Local is the coordinator of a single authority (bbolt storage): it is
// always the leader.
type Local struct{ Self Member }

// Run calls lead at once and returns when ctx ends.
func (l *Local) Run(ctx context.Context, lead func(context.Context)) error {
	lead(ctx)
	<-ctx.Done()
	return nil
}

// Status reports this authority as the only member and the leader.
func (l *Local) Status(context.Context) (Status, error) {
	return Status{Mode: "single", Self: l.Self, IsLeader: true, Leader: l.Self, Members: []Member{l.Self}}, nil
}
