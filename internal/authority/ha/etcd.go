package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/wardproject/ward/internal/authority/store/etcdstore"
)

// Etcd elects the leader among the authorities sharing one etcd prefix.
// Keys: <prefix>ha/members/<lease> (one per member, on its lease) and
// <prefix>ha/leader/<lease> (the election; the oldest key leads).
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	self   Member
	ttl    time.Duration
	log    *slog.Logger
	// margin is subtracted from the lease's end: the leader stops its jobs
	// this long before etcd could expire its lease (clock rate drift,
	// scheduling delays).
	margin time.Duration

	mu      sync.Mutex
	leading bool
	term    int64
	lease   *leaseValidity // of the current session
	created time.Time

	// lost is closed when this member is found cut off (watchConnectivity);
	// a new one is made when it is connected again.
	lostMu sync.Mutex
	lost   chan struct{}
}

// Connected reports whether this member holds a live lease now, that is
// whether etcd answered a renewal within the lease TTL. An authority cut
// off from etcd refuses API calls at once (Unavailable) instead of holding
// them until the caller's deadline, so failover clients move on.
func (e *Etcd) Connected() bool {
	e.mu.Lock()
	lv := e.lease
	e.mu.Unlock()
	if lv == nil {
		// Not yet joined: connected until a first lease is overdue (an
		// authority just unsealed serves at once).
		return time.Since(e.created) < e.ttl
	}
	return time.Now().Before(lv.until(0))
}

// connectivityPoll is how often Run looks whether the member was cut off,
// to close the channel Lost returned.
const connectivityPoll = 100 * time.Millisecond

// Lost returns a channel closed once this member is cut off from etcd
// (already closed when it is now): long-lived streams end on it, so their
// clients move to another authority instead of waiting on one that can
// no longer read or write.
func (e *Etcd) Lost() <-chan struct{} {
	connected := e.Connected()
	e.lostMu.Lock()
	defer e.lostMu.Unlock()
	if e.lost == nil {
		e.lost = make(chan struct{})
	}
	select {
	case <-e.lost:
		if connected {
			e.lost = make(chan struct{})
		}
	default:
		if !connected {
			close(e.lost)
		}
	}
	return e.lost
}

// watchConnectivity closes Lost's channel when the member is cut off,
// until ctx ends.
func (e *Etcd) watchConnectivity(ctx context.Context) {
	t := time.NewTicker(connectivityPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.Lost()
		}
	}
}

// NewEtcd returns the coordinator of self over st's etcd cluster and
// prefix; ttl is the lease (0: DefaultLeaseTTL, at least 2 s).
func NewEtcd(st *etcdstore.Store, self Member, ttl time.Duration, log *slog.Logger) *Etcd {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	ttl = max(ttl.Truncate(time.Second), 2*time.Second)
	if log == nil {
		log = slog.Default()
	}
	return &Etcd{cli: st.Client(), prefix: st.Prefix() + "ha/", self: self, ttl: ttl, log: log, margin: max(ttl/10, 200*time.Millisecond), created: time.Now()}
}

func (e *Etcd) membersPrefix() string  { return e.prefix + "members/" }
func (e *Etcd) electionPrefix() string { return e.prefix + "leader/" }

// Run registers and campaigns until ctx ends; after a lost session (etcd
// unreachable for longer than the lease) it starts over with a new one.
func (e *Etcd) Run(ctx context.Context, lead func(context.Context)) error {
	go e.watchConnectivity(ctx)
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := e.session(ctx, lead)
		if ctx.Err() != nil {
			break
		}
		e.log.Warn("ha: election session ended; joining again", "member", e.self.Name, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, e.ttl/2)
	}
	return nil
}

// session runs one lease: membership, campaign, leadership.
func (e *Etcd) session(ctx context.Context, lead func(context.Context)) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gctx, gcancel := context.WithTimeout(sctx, e.ttl)
	sent := time.Now()
	grant, err := e.cli.Grant(gctx, int64(e.ttl/time.Second))
	gcancel()
	if err != nil {
		return fmt.Errorf("granting a lease: %w", err)
	}
	lease := grant.ID
	lv := &leaseValidity{}
	lv.renewed(sent, time.Duration(grant.TTL)*time.Second)
	e.mu.Lock()
	e.lease = lv
	e.mu.Unlock()
	sess, err := concurrency.NewSession(e.cli, concurrency.WithLease(lease), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("starting an election session: %w", err)
	}
	defer func() {
		// Revoke the lease (gives up leadership and membership at once)
		// on a graceful stop; bounded, as etcd may be unreachable.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		e.cli.Revoke(rctx, lease)
		rcancel()
		sess.Close()
	}()
	lost := make(chan struct{})
	go e.renew(sctx, lease, lv, lost)

	me := e.self
	body, _ := json.Marshal(me)
	key := fmt.Sprintf("%s%x", e.membersPrefix(), int64(lease))
	pctx, pcancel := context.WithTimeout(sctx, e.ttl)
	_, err = e.cli.Put(pctx, key, string(body), clientv3.WithLease(lease))
	pcancel()
	if err != nil {
		return fmt.Errorf("registering member %s: %w", me.Name, err)
	}
	el := concurrency.NewElection(sess, e.electionPrefix())
	cctx, ccancel := context.WithCancel(sctx)
	go func() {
		select {
		case <-lost:
		case <-sess.Done():
		case <-cctx.Done():
		}
		ccancel()
	}()
	// Campaign, when its context ends, resigns with the etcd client's own
	// context, which waits for etcd without bound: a member cut off from
	// etcd would then never stop (seal, SIGTERM). So a stop does not wait
	// for it; it returns once etcd answers or the client is closed, and the
	// lease nobody renews any more expires in etcd by itself.
	campaigned := make(chan error, 1)
	go func() { campaigned <- el.Campaign(cctx, string(body)) }()
	select {
	case err = <-campaigned:
	case <-sctx.Done():
		ccancel()
		return fmt.Errorf("campaigning: %w", sctx.Err())
	}
	if err != nil {
		ccancel()
		return fmt.Errorf("campaigning: %w", err)
	}
	// Leader until the lease could have expired in etcd, the session
	// ends, or ctx ends: whichever comes first.
	lctx, lcancel := context.WithCancel(etcdstore.WithFence(sctx, el.Key(), el.Rev()))
	go func() {
		defer lcancel()
		for {
			wait := time.Until(lv.until(e.margin))
			if wait <= 0 {
				e.log.Error("ha: leadership lease could not be renewed in time; stopping the leader's jobs", "member", me.Name, "term", el.Rev())
				return
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-cctx.Done():
				t.Stop()
				return
			}
		}
	}()
	e.setLeading(true, el.Rev())
	e.log.Info("ha: elected leader", "member", me.Name, "term", el.Rev(), "lease_ttl", e.ttl)
	lead(lctx)
	<-lctx.Done()
	e.setLeading(false, 0)
	ccancel()
	e.log.Info("ha: leadership ended", "member", me.Name, "term", el.Rev())
	return errors.New("leadership ended")
}

// renew renews the lease every ttl/4 with one request each, recording the
// send time of the last success: etcd keeps the lease at least ttl after
// it received that renewal, so after sent+ttl nothing is promised. When
// etcd says the lease is gone, lost is closed.
func (e *Etcd) renew(ctx context.Context, lease clientv3.LeaseID, lv *leaseValidity, lost chan struct{}) {
	t := time.NewTicker(e.ttl / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, e.ttl/4)
		resp, err := e.cli.KeepAliveOnce(rctx, lease)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			lv.renewed(sent, time.Duration(resp.TTL)*time.Second)
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return
		case err != nil && isLeaseGone(err):
			close(lost)
			return
		}
	}
}

func isLeaseGone(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound) || strings.Contains(err.Error(), "requested lease not found")
}

// leaseValidity is the time until which the lease is known to be alive in
// etcd.
type leaseValidity struct {
	mu  sync.Mutex
	end time.Time
}

func (v *leaseValidity) renewed(sent time.Time, ttl time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if end := sent.Add(ttl); end.After(v.end) {
		v.end = end
	}
}

func (v *leaseValidity) until(margin time.Duration) time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.end.Add(-margin)
}

func (e *Etcd) setLeading(on bool, term int64) {
	e.mu.Lock()
	e.leading, e.term = on, term
	e.mu.Unlock()
}

// Status lists the members and the leader as etcd has them now.
func (e *Etcd) Status(ctx context.Context) (Status, error) {
	st := Status{Mode: "etcd", Self: e.self, LeaseTTL: e.ttl}
	e.mu.Lock()
	st.IsLeader = e.leading
	e.mu.Unlock()
	resp, err := e.cli.Get(ctx, e.membersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return st, fmt.Errorf("listing the authorities in etcd: %w", err)
	}
	for _, kv := range resp.Kvs {
		var m Member
		if json.Unmarshal(kv.Value, &m) == nil {
			st.Members = append(st.Members, m)
		}
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].Name < st.Members[j].Name })
	lr, err := e.cli.Get(ctx, e.electionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return st, fmt.Errorf("reading the elected leader from etcd: %w", err)
	}
	if len(lr.Kvs) > 0 {
		json.Unmarshal(lr.Kvs[0].Value, &st.Leader)
		st.Term = lr.Kvs[0].CreateRevision
	}
	return st, nil
}
