package server

import (
	"context"
	"crypto/fips140"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// DriftEvaluator compares declared rules with a state; the CLI wires
// internal/governance/drift.Evaluate here (the authority never imports
// governance), as it wires the anomaly detector.
type DriftEvaluator func(posture.Rules, posture.State) []posture.Finding

// DefaultDriftInterval is how often the authority evaluates drift.
const DefaultDriftInterval = 30 * time.Second

// maxDriftEvents bounds the audit events one evaluation appends (new and
// resolved findings); the rest are counted in one summary event.
const maxDriftEvents = 100

const driftActor = "system:drift"

// driftState is the authority's continuous drift evaluation: the latest
// report, what changed, and the telemetry nodes sent.
type driftState struct {
	eval     DriftEvaluator
	interval time.Duration
	// telemetryInterval is the agents' reporting interval the Node API
	// enforces (0: nodeapi.DefaultTelemetryInterval).
	telemetryInterval time.Duration
	now               func() time.Time
	kick              chan struct{}
	// evalMu serializes evaluations (the loop and admin calls), so
	// changes are audited once.
	evalMu sync.Mutex

	mu     sync.Mutex
	latest posture.Report
	has    bool
	known  map[string]posture.Finding // by Finding.ID, for change detection
	// policyCover caches the compiled current policy version.
	policyVer uint64
	policySet *policy.Set

	tel *telemetryStore
}

func newDriftState() *driftState {
	return &driftState{interval: DefaultDriftInterval, now: time.Now, kick: make(chan struct{}, 1), tel: newTelemetryStore()}
}

// SetDriftEvaluator makes the authority evaluate drift every interval
// (DefaultDriftInterval when 0) and right after a new posture version,
// keeping the latest findings (Drift), exporting them as metrics and
// auditing each new and resolved finding ("drift.finding",
// "drift.resolved", by system:drift). Call it before Start.
func (s *Server) SetDriftEvaluator(fn DriftEvaluator, interval time.Duration) {
	s.drift.eval = fn
	if interval > 0 {
		s.drift.interval = interval
	}
}

// SetTelemetryInterval sets how often agents may report telemetry (once
// per half of it; default nodeapi.DefaultTelemetryInterval). Call it
// before Start.
func (s *Server) SetTelemetryInterval(d time.Duration) { s.drift.telemetryInterval = d }

// SetClock replaces the clock of the KMS (key creation and rotation
// times), of drift evaluations and of telemetry receipts: tests make a key
// look old with it. Call it before Start.
func (s *Server) SetClock(now func() time.Time) { s.drift.now = now }

// Drift returns the latest drift report (ok false before the first
// evaluation, or when no evaluator is wired).
func (s *Server) Drift() (posture.Report, bool) {
	s.drift.mu.Lock()
	defer s.drift.mu.Unlock()
	r := s.drift.latest
	r.Findings = append([]posture.Finding(nil), r.Findings...)
	return r, s.drift.has
}

// Telemetry returns the latest telemetry report of every node, by node.
func (s *Server) Telemetry() []telemetry.NodeReport { return s.drift.tel.snapshot(s.drift.now()) }

// ReportTelemetry stores what node (an authenticated agent's SPIFFE ID)
// reported: raw is its NodeReport JSON, decoded and bounded here. The
// Node API calls it; the node named in the report, if any, must be node.
func (s *Server) ReportTelemetry(node string, raw []byte) error {
	r, err := telemetry.DecodeNodeReport(raw)
	if err != nil {
		s.metrics.telemetry.WithLabelValues("invalid").Inc()
		return err
	}
	if r.Node != "" && r.Node != node {
		s.metrics.telemetry.WithLabelValues("other_node").Inc()
		return nodeapi.ErrOtherNode{Msg: fmt.Sprintf("telemetry for %s sent by %s: a node reports for itself only", r.Node, node)}
	}
	r.Node, r.Received = node, s.drift.now().UTC()
	s.drift.tel.put(r)
	s.metrics.telemetry.WithLabelValues("ok").Inc()
	return nil
}

// PostureChanged asks the drift loop for an evaluation now (a new posture
// version was stored).
func (s *Server) PostureChanged() {
	select {
	case s.drift.kick <- struct{}{}:
	default:
	}
}

// driftLoop evaluates drift periodically until ctx ends: a singleton job
// of the elected leader (ha.go), so each finding is audited once per
// cluster.
func (s *Server) driftLoop(ctx context.Context) {
	if s.drift.eval == nil {
		return
	}
	t := time.NewTicker(s.drift.interval)
	defer t.Stop()
	for {
		// Leader jobs may start a moment before the unsealed state is
		// published: that first tick has nothing to evaluate.
		if _, err := s.state(); err == nil {
			if _, err := s.EvaluateDrift(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("drift evaluation failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.drift.kick:
		}
	}
}

// EvaluateDrift evaluates drift now with the wired evaluator: the current
// posture against DriftState. It keeps the report as the latest, and
// audits findings that appeared or were resolved since the last one.
func (s *Server) EvaluateDrift(ctx context.Context) (posture.Report, error) {
	if s.drift.eval == nil {
		return posture.Report{}, fmt.Errorf("drift evaluation is not wired into this authority")
	}
	s.drift.evalMu.Lock()
	defer s.drift.evalMu.Unlock()
	rules, ver, scope, st, err := s.DriftState(ctx)
	if err != nil {
		return posture.Report{}, err
	}
	rep := posture.Report{PostureVersion: ver, Scope: scope, TrustDomain: st.TrustDomain, Evaluated: st.Now.Format(time.RFC3339)}
	if ver != 0 {
		rep.Findings = s.drift.eval(rules, st)
	}
	if rep.Findings == nil {
		rep.Findings = []posture.Finding{}
	}
	s.drift.mu.Lock()
	prev := s.drift.known
	next := make(map[string]posture.Finding, len(rep.Findings))
	var appeared, resolved []posture.Finding
	for _, f := range rep.Findings {
		next[f.ID()] = f
		if _, ok := prev[f.ID()]; !ok {
			appeared = append(appeared, f)
		}
	}
	for id, f := range prev {
		if _, ok := next[id]; !ok {
			resolved = append(resolved, f)
		}
	}
	sort.Slice(resolved, func(i, j int) bool { return resolved[i].ID() < resolved[j].ID() })
	s.drift.latest, s.drift.has, s.drift.known = rep, true, next
	s.drift.mu.Unlock()
	s.metrics.driftEvaluations.Inc()
	s.auditDrift(ctx, appeared, resolved)
	return rep, nil
}

// auditDrift appends one event per new and per resolved finding (at most
// maxDriftEvents, then one summary), so the log shows when drift began
// and ended without an event every tick.
func (s *Server) auditDrift(ctx context.Context, appeared, resolved []posture.Finding) {
	st, err := s.state()
	if err != nil {
		return
	}
	ctx = reqctx.With(ctx, reqctx.Caller{Actor: driftActor, RequestID: reqctx.NewRequestID()})
	n := 0
	for _, group := range []struct {
		op string
		fs []posture.Finding
	}{{"drift.finding", appeared}, {"drift.resolved", resolved}} {
		for _, f := range group.fs {
			if n == maxDriftEvents {
				ev := audit.NewEvent(ctx, "drift.truncated", audit.ResultOK)
				ev.Fields = map[string]string{"appeared": fmt.Sprint(len(appeared)), "resolved": fmt.Sprint(len(resolved)), "recorded": fmt.Sprint(n)}
				if err := st.recorder.Record(ctx, ev); err != nil {
					s.log.Warn("auditing drift findings", "err", err)
				}
				return
			}
			n++
			ev := audit.NewEvent(ctx, group.op, audit.ResultOK)
			ev.Fields = map[string]string{"rule": f.Rule, "object": f.Object, "severity": f.Severity.String(), "source": f.Source}
			if group.op == "drift.finding" {
				ev.Fields["evidence"] = truncate(f.Evidence, 512)
				ev.Fields["fix"] = truncate(f.Fix, 512)
			}
			if err := st.recorder.Record(ctx, ev); err != nil {
				s.log.Warn("auditing drift findings", "err", err)
				return
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// DriftState gathers what drift compares the posture with: the current
// posture's rules for this trust domain (version 0 when none is declared),
// the scope that applied, and the authority's state with the telemetry of
// its nodes.
func (s *Server) DriftState(ctx context.Context) (rules posture.Rules, version uint64, scope string, st posture.State, err error) {
	u, err := s.state()
	if err != nil {
		return rules, 0, "", st, err
	}
	st = posture.State{TrustDomain: s.cfg.TrustDomain, Now: s.drift.now().UTC(), AuthorityFIPS: fips140.Enabled(), Nodes: s.drift.tel.snapshot(s.drift.now())}
	if v, err := u.posture.Get(ctx, 0); err == nil {
		f, perr := v.File()
		if perr != nil {
			return rules, 0, "", st, fmt.Errorf("posture version %d: %w", v.Number, perr)
		}
		rules, scope = f.For(s.cfg.TrustDomain, "")
		version = v.Number
	} else if errs.Is(err, errs.NotFound) {
		// No posture yet: the state is still gathered (ward drift shows it).
	} else {
		return rules, 0, "", st, err
	}
	keys, err := u.kms.List(ctx, "")
	if err != nil {
		return rules, version, scope, st, fmt.Errorf("listing keys: %w", err)
	}
	for _, k := range keys {
		st.Keys = append(st.Keys, driftKey(k))
	}
	ic := s.cfg.Identity.Effective()
	if id := u.ident.Load(); id != nil {
		entries, err := id.reg.ListEntries(ctx, registry.ListFilter{})
		if err != nil {
			return rules, version, scope, st, fmt.Errorf("listing entries: %w", err)
		}
		for _, e := range entries {
			eff := e.TTL
			if eff == 0 {
				eff = time.Duration(ic.SVIDTTL)
			}
			st.Entries = append(st.Entries, posture.Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, TTL: e.TTL, EffectiveTTL: eff})
		}
		if fed := id.fed; fed != nil {
			for _, b := range fed.List() {
				st.Bundles = append(st.Bundles, posture.Bundle{TrustDomain: b.TrustDomain.Name(), LastRefresh: b.LastRefresh.UTC(), Error: b.LastError})
			}
		}
	}
	st.PolicyVersion, st.Services = s.driftServices(ctx, u, st)
	return rules, version, scope, st, nil
}

func driftKey(k kms.View) posture.Key {
	out := posture.Key{Name: k.Name, Classification: k.Classification, LastRotated: k.LastRotated.UTC(), Disabled: true}
	for _, v := range k.Versions {
		if v.State != kms.StateDestroyed {
			out.Versions++
		}
	}
	if n := len(k.Versions); n > 0 && k.Versions[n-1].State == kms.StateEnabled {
		out.Disabled = false
	}
	return out
}

// maxCoverPrincipals bounds the identities tried per service when deciding
// whether a policy covers it.
const maxCoverPrincipals = 1000

// driftServices lists the inbound services the nodes report (and the
// exported ones of this trust domain) and whether the current policy
// version lets some registered identity connect to each.
func (s *Server) driftServices(ctx context.Context, u *unsealedState, st posture.State) (uint64, []posture.Service) {
	names := map[string]policy.Resource{}
	for _, n := range st.Nodes {
		for _, p := range n.Processes {
			for _, l := range p.Listeners {
				if l.Direction == "inbound" && l.Service != "" {
					names[l.Service] = policy.Resource{Type: policy.TypeService, Name: l.Service}
				}
			}
		}
	}
	if len(names) == 0 {
		return 0, nil
	}
	ver, err := u.policy.Current(ctx)
	if err != nil {
		ver = 0
	}
	var set *policy.Set
	if ver != 0 {
		s.drift.mu.Lock()
		if s.drift.policyVer == ver {
			set = s.drift.policySet
		}
		s.drift.mu.Unlock()
		if set == nil {
			if v, err := u.policy.Get(ctx, ver); err == nil {
				if set, err = u.policy.Compile(v.Bundle); err == nil {
					s.drift.mu.Lock()
					s.drift.policyVer, s.drift.policySet = ver, set
					s.drift.mu.Unlock()
				}
			}
		}
	}
	principals := map[string]bool{}
	for _, e := range st.Entries {
		if len(principals) < maxCoverPrincipals {
			principals[e.SPIFFEID] = true
		}
	}
	out := make([]posture.Service, 0, len(names))
	for name, res := range names {
		svc := posture.Service{Name: name}
		if set != nil {
			for p := range principals {
				if d := set.Decide(policy.Request{Principal: p, Action: policy.ActionConnect, Resource: res}); d.Allowed {
					svc.PolicyCovered, svc.Evidence = true, "allows "+p
					break
				}
			}
			if !svc.PolicyCovered {
				svc.Evidence = fmt.Sprintf("none of the %d registered identities may connect", len(principals))
			}
		}
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return ver, out
}

// telemetryStore keeps the latest report of each node (bounded).
type telemetryStore struct {
	mu    sync.Mutex
	nodes map[string]telemetry.NodeReport
}

// maxTelemetryNodes bounds the nodes kept; past it the oldest report goes.
const maxTelemetryNodes = 100000

// telemetryForget: a node silent this long is forgotten (it was evicted or
// removed); until then drift reports it as telemetry.stale.
const telemetryForget = 24 * time.Hour

func newTelemetryStore() *telemetryStore {
	return &telemetryStore{nodes: map[string]telemetry.NodeReport{}}
}

func (t *telemetryStore) put(r telemetry.NodeReport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.nodes[r.Node]; !ok && len(t.nodes) >= maxTelemetryNodes {
		var oldest string
		var at time.Time
		for k, v := range t.nodes {
			if oldest == "" || v.Received.Before(at) {
				oldest, at = k, v.Received
			}
		}
		delete(t.nodes, oldest)
	}
	t.nodes[r.Node] = r
}

func (t *telemetryStore) snapshot(now time.Time) []telemetry.NodeReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]telemetry.NodeReport, 0, len(t.nodes))
	for k, r := range t.nodes {
		if now.Sub(r.Received) > telemetryForget {
			delete(t.nodes, k)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// driftCollector exports the latest findings: a gauge per rule and
// severity, and the time of the last evaluation.
type driftCollector struct{ s *Server }

var (
	driftFindingsDesc = prometheus.NewDesc("ward_drift_findings",
		"Drift findings of the latest evaluation, by rule and severity (docs/governance.md).", []string{"rule", "severity"}, nil)
	driftLastDesc = prometheus.NewDesc("ward_drift_last_evaluation_timestamp_seconds",
		"When drift was last evaluated (Unix time; absent before the first evaluation).", nil, nil)
	driftPostureDesc = prometheus.NewDesc("ward_posture_version",
		"The posture version the latest drift evaluation used (0: none declared).", nil, nil)
	telemetryNodesDesc = prometheus.NewDesc("ward_telemetry_nodes",
		"Nodes whose telemetry the authority holds.", nil, nil)
)

func (c *driftCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- driftFindingsDesc
	ch <- driftLastDesc
	ch <- driftPostureDesc
	ch <- telemetryNodesDesc
}

func (c *driftCollector) Collect(ch chan<- prometheus.Metric) {
	rep, ok := c.s.Drift()
	ch <- prometheus.MustNewConstMetric(telemetryNodesDesc, prometheus.GaugeValue, float64(len(c.s.drift.tel.snapshot(c.s.drift.now()))))
	if !ok {
		return
	}
	counts := map[[2]string]int{}
	for _, f := range rep.Findings {
		counts[[2]string{f.Rule, f.Severity.String()}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(driftFindingsDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	if t, err := time.Parse(time.RFC3339, rep.Evaluated); err == nil {
		ch <- prometheus.MustNewConstMetric(driftLastDesc, prometheus.GaugeValue, float64(t.Unix()))
	}
	ch <- prometheus.MustNewConstMetric(driftPostureDesc, prometheus.GaugeValue, float64(rep.PostureVersion))
}
