package server

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/ha"
	"github.com/wardproject/ward/internal/authority/store/etcdstore"
	"github.com/wardproject/ward/internal/shared/buildinfo"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// haState is this authority's place among the authorities sharing its
// store while unsealed: a member, and the leader or not.
type haState struct {
	coord   ha.Coordinator
	leading atomic.Bool
}

// newCoordinator returns the election of this authority: etcd's when the
// store is etcd, else the single authority that always leads.
func (s *Server) newCoordinator(self ha.Member) ha.Coordinator {
	if es, ok := s.raw.(*etcdstore.Store); ok {
		e := s.cfg.Storage.Etcd
		return ha.NewEtcd(es, self, time.Duration(e.LeaseTTL), s.log.With("component", "ha"))
	}
	return &ha.Local{Self: self}
}

func (s *Server) memberName() string {
	if n := s.cfg.Storage.Etcd.MemberName; n != "" {
		return n
	}
	return ha.DefaultName()
}

// runHA joins the election until ctx ends (seal); while this authority
// leads, the singleton jobs run (leaderJobs).
func (s *Server) runHA(ctx context.Context, st *unsealedState) {
	self := ha.Member{Name: s.memberName(), Version: buildinfo.Read().Version, Since: time.Now().UTC().Truncate(time.Second)}
	if id := st.ident.Load(); id != nil && id.node != nil {
		if a := id.node.Addr(); a != nil {
			self.Address = a.String()
		}
	}
	h := &haState{coord: s.newCoordinator(self)}
	st.ha.Store(h)
	h.coord.Run(ctx, func(lctx context.Context) {
		h.leading.Store(true)
		s.leaderships.Add(1)
		s.leaderJobs(lctx, st)
		h.leading.Store(false)
	})
}

// leaderJobs runs every job only one authority may run at a time, until
// ctx (the leadership) ends, and returns once all of them stopped. Every
// write they make through the etcd store is fenced on the leadership
// (etcdstore.WithFence), so one still under way when the lease ran out
// fails instead of racing the next leader.
func (s *Server) leaderJobs(ctx context.Context, st *unsealedState) {
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	run(func() { s.rotationLoop(ctx, st.kms) })
	run(func() { s.purgeRequests(ctx) })
	run(func() { s.rewriteLoop(ctx, st) }) // barrier rotation (maintenance.go)
	run(func() { s.driftLoop(ctx) })
	if id := st.ident.Load(); id != nil {
		fc := s.cfg.Federation.Effective()
		svid := federation.RevocationClient{SVID: id.svid.SVID}
		run(func() { id.fed.RunRevocations(ctx, svid) })
		run(func() {
			id.fed.RunWitness(ctx, federation.WitnessClient{SVID: id.svid.SVID, Interval: time.Duration(fc.WitnessInterval)})
		})
		run(func() { id.fed.RunCatalogs(ctx, svid) })
		run(func() { id.fed.RunNetwork(ctx, svid) })
		run(func() { id.fed.Run(ctx) })
		run(func() { id.ca.Run(ctx, 0, func(err error) { s.log.Error("CA rotation schedule", "err", err) }) })
		run(func() {
			t := time.NewTicker(time.Hour)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					c := reqctx.With(ctx, reqctx.Caller{Actor: "system:purge", RequestID: reqctx.NewRequestID()})
					if _, err := id.reg.PurgeTokens(c, time.Hour); err != nil {
						s.log.Warn("purging expired join tokens", "err", err)
					}
				}
			}
		})
	}
	for _, f := range s.leaderHooks {
		run(func() { f(ctx) })
	}
	wg.Wait()
}

// AddLeaderJob adds a job that runs only on the elected leader (the
// anomaly detector's feed, wired by the CLI): f runs while this authority
// leads and must return soon after its context ends. Call it before Start.
func (s *Server) AddLeaderJob(f func(ctx context.Context)) { s.leaderHooks = append(s.leaderHooks, f) }

// Clustered reports whether this authority shares its store with others
// (etcd): then jobs that must see every authority's events (the anomaly
// detector) follow the audit log on the leader instead of observing this
// authority's own events.
func (s *Server) Clustered() bool {
	_, ok := s.raw.(*etcdstore.Store)
	return ok
}

// FollowAudit calls fn with every event appended to the audit log, by any
// authority sharing the store, from the call until ctx ends (or the
// authority seals). Records that cannot be read are skipped (`ward audit
// verify` names them).
func (s *Server) FollowAudit(ctx context.Context, fn func(audit.Event)) error {
	st, err := s.state()
	if err != nil {
		return err
	}
	size := st.audit.Size()
	if n, err := st.audit.StoredSize(ctx); err == nil && n > size {
		size = n
	}
	for {
		n, err := st.audit.Wait(ctx, size)
		if err != nil {
			return err
		}
		err = st.audit.Read(ctx, size, n, func(r audit.Record) error {
			if r.Err == nil {
				if ev, err := audit.DecodeEvent(r.Leaf); err == nil {
					ev.Context = nil
					fn(ev)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		size = n
	}
}

// ClusterStatus reports the authorities sharing this one's store and the
// elected leader; sealed authorities are not members.
func (s *Server) ClusterStatus(ctx context.Context) (ha.Status, error) {
	st, err := s.state()
	if err != nil {
		return ha.Status{Mode: "sealed", Self: ha.Member{Name: s.memberName(), Version: buildinfo.Read().Version}}, nil
	}
	h := st.ha.Load()
	if h == nil {
		return ha.Status{Mode: "starting", Self: ha.Member{Name: s.memberName(), Version: buildinfo.Read().Version}}, nil
	}
	out, err := h.coord.Status(ctx)
	out.IsLeader = h.leading.Load()
	return out, err
}

// IsLeader reports whether this authority runs the singleton jobs now.
func (s *Server) IsLeader() bool {
	st, err := s.state()
	if err != nil {
		return false
	}
	h := st.ha.Load()
	return h != nil && h.leading.Load()
}

// haCollector exports ward_ha_leader (1 while this authority leads) and
// ward_ha_leaderships_total.
type haCollector struct{ s *Server }

var (
	haLeaderDesc = prometheus.NewDesc("ward_ha_leader", "1 while this authority is the elected leader that runs the singleton jobs (rotation schedules, federation refresh), else 0.", nil, nil)
	haTermsDesc  = prometheus.NewDesc("ward_ha_leaderships_total", "Times this authority became the elected leader since it started.", nil, nil)
)

func (c haCollector) Describe(ch chan<- *prometheus.Desc) { ch <- haLeaderDesc; ch <- haTermsDesc }

func (c haCollector) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	if c.s.IsLeader() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(haLeaderDesc, prometheus.GaugeValue, v)
	ch <- prometheus.MustNewConstMetric(haTermsDesc, prometheus.CounterValue, float64(c.s.leaderships.Load()))
}

// connectivity is this authority's link to the store it shares with
// others (etcd), nil when there is none (bbolt) or it is not unsealed.
func (s *Server) connectivity() ha.Connectivity {
	st, err := s.state()
	if err != nil {
		return nil
	}
	h := st.ha.Load()
	if h == nil {
		return nil
	}
	c, _ := h.coord.(ha.Connectivity)
	return c
}

// cutOff reports whether this authority lost its etcd lease (etcd has not
// answered within the lease TTL): its calls would hang, so they are
// refused at once and failover clients try another authority.
func (s *Server) cutOff() bool {
	c := s.connectivity()
	return c != nil && !c.Connected()
}

// cutOffRefusal refuses unary calls other than status and lifecycle while
// cut off (adminUnary); nil otherwise.
func (s *Server) cutOffRefusal(method string) error {
	if !strings.HasPrefix(method, "/ward.v1.Operator/") && !strings.HasPrefix(method, "/ward.v1.Cluster/") && s.cutOff() {
		return errCutOff
	}
	return nil
}

// cutOffMessage is what calls get from an authority cut off from etcd.
const cutOffMessage = "this authority is cut off from etcd (its lease was not renewed within the lease TTL): try another authority"

var errCutOff = status.Error(codes.Unavailable, cutOffMessage)

// nodeAvailable is the Node API's Available: while cut off every call
// fails at once with Unavailable (agents move to another authority);
// otherwise open streams end when it gets cut off.
func (s *Server) nodeAvailable() (<-chan struct{}, error) {
	c := s.connectivity()
	if c == nil {
		return nil, nil
	}
	if !c.Connected() {
		return nil, errors.New(cutOffMessage)
	}
	return c.Lost(), nil
}
