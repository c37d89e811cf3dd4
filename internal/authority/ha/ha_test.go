package ha

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store/etcdstore"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

type member struct {
	name    string
	coord   *Etcd
	st      *etcdstore.Store
	cancel  context.CancelFunc
	done    chan struct{}
	leading atomic.Bool
	fence   atomic.Value // context.Context of the current leadership
}

// Three members on one etcd: exactly one leads at any time; when the
// leader leaves another takes over; a write fenced on a leadership that
// ended is refused.
func TestElectionOneLeaderTakeoverAndFence(t *testing.T) {
	etcd := etcdtest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var mu sync.Mutex
	leaders := 0
	maxLeaders := 0
	start := func(name string) *member {
		st, err := etcdstore.Open(context.Background(), etcdstore.Config{Endpoints: etcd.Endpoints(), Prefix: "/ha-test/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		m := &member{name: name, st: st, done: make(chan struct{})}
		m.coord = NewEtcd(st, Member{Name: name, Version: "test"}, 2*time.Second, log)
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel = cancel
		go func() {
			defer close(m.done)
			m.coord.Run(ctx, func(lctx context.Context) {
				mu.Lock()
				leaders++
				maxLeaders = max(maxLeaders, leaders)
				mu.Unlock()
				m.fence.Store(lctx)
				m.leading.Store(true)
				<-lctx.Done()
				m.leading.Store(false)
				mu.Lock()
				leaders--
				mu.Unlock()
			})
		}()
		t.Cleanup(func() { cancel(); <-m.done })
		return m
	}
	ms := []*member{start("a"), start("b"), start("c")}
	leader := func() *member {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			var l []*member
			for _, m := range ms {
				if m.leading.Load() {
					l = append(l, m)
				}
			}
			if len(l) == 1 {
				return l[0]
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("no single leader elected")
		return nil
	}
	first := leader()
	// A member may win the election before the last one has registered:
	// wait (bounded) for all three in the status.
	st := statusWith(t, first, 3)
	if st.Leader.Name != first.name || !st.IsLeader {
		t.Fatalf("status from the leader: %+v", st)
	}
	// The first leader leaves (its process stops): another takes over.
	oldFence := first.fence.Load().(context.Context)
	first.cancel()
	<-first.done
	var rest []*member
	for _, m := range ms {
		if m != first {
			rest = append(rest, m)
		}
	}
	ms = rest
	second := leader()
	if second == first {
		t.Fatal("the stopped member still leads")
	}
	st = statusWith(t, second, 2)
	if st.Leader.Name != second.name {
		t.Fatalf("status after takeover: %+v", st)
	}
	// A write fenced on the first leadership is refused; on the current
	// one it succeeds.
	fctx := context.WithoutCancel(oldFence)
	if _, err := second.st.Put(fctx, "jobs/x", []byte("late write of the old leader")); !errors.Is(err, etcdstore.ErrFenced) {
		t.Fatalf("fenced write of an ended leadership: %v, want ErrFenced", err)
	}
	if _, err := second.st.CompareAndSwap(fctx, "jobs/y", []byte("x"), 0); !errors.Is(err, etcdstore.ErrFenced) {
		t.Fatalf("fenced CAS of an ended leadership: %v, want ErrFenced", err)
	}
	cur := context.WithoutCancel(second.fence.Load().(context.Context))
	if _, err := second.st.Put(cur, "jobs/x", []byte("leader's write")); err != nil {
		t.Fatalf("fenced write of the current leader: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if maxLeaders != 1 {
		t.Fatalf("%d members led at the same time", maxLeaders)
	}
}

// A leader that can no longer renew its lease stops leading by the time
// etcd could expire it, before any other member can be elected.
func TestLeaseValidityEndsLeadership(t *testing.T) {
	var v leaseValidity
	now := time.Now()
	v.renewed(now, 2*time.Second)
	v.renewed(now.Add(-time.Second), 2*time.Second) // an older renewal answered late
	if got := v.until(0); !got.Equal(now.Add(2 * time.Second)) {
		t.Fatalf("validity %v, want the newest renewal's send time plus the TTL", got)
	}
	if got := v.until(200 * time.Millisecond); !got.Equal(now.Add(1800 * time.Millisecond)) {
		t.Fatalf("validity with margin %v", got)
	}
}

// A member just created counts as connected until a first lease is
// overdue, so an authority serves at once after unseal; then it follows
// its lease.
func TestConnectedBeforeTheFirstLease(t *testing.T) {
	e := &Etcd{ttl: 2 * time.Second, created: time.Now()}
	if !e.Connected() {
		t.Fatal("a new member must count as connected during its first TTL")
	}
	e.created = time.Now().Add(-3 * time.Second)
	if e.Connected() {
		t.Fatal("a member without a lease after a TTL is cut off")
	}
	e.lease = &leaseValidity{}
	e.lease.renewed(time.Now(), 2*time.Second)
	if !e.Connected() {
		t.Fatal("a member with a live lease is connected")
	}
}

// Lost's channel is closed while the member is cut off and a fresh one is
// handed out once it is connected again (a stream opened then must not end
// at once on the old episode).
func TestLostFollowsConnectivity(t *testing.T) {
	e := &Etcd{ttl: 2 * time.Second, created: time.Now()}
	ch := e.Lost()
	select {
	case <-ch:
		t.Fatal("Lost closed while connected")
	default:
	}
	e.lease = &leaseValidity{}
	e.lease.renewed(time.Now().Add(-3*time.Second), 2*time.Second) // lapsed
	if e.Lost() != ch {
		t.Fatal("Lost handed out another channel instead of closing the current one")
	}
	select {
	case <-ch:
	default:
		t.Fatal("Lost not closed while cut off")
	}
	e.lease.renewed(time.Now(), 2*time.Second)
	next := e.Lost()
	select {
	case <-next:
		t.Fatal("after reconnecting Lost still returns the closed channel")
	default:
	}
}

// statusWith polls m's status (bounded) until it lists n members.
func statusWith(t *testing.T, m *member, n int) Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := m.coord.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Members) == n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never listed %d members: %+v", n, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
