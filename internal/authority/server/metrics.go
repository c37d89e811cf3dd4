package server

import (
	"context"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/shared/policy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// metrics holds the authority's Prometheus collectors.
type metrics struct {
	reg     *prometheus.Registry
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec
	methods sync.Map // full method name -> *methodMetrics
	// Policy decisions for workload KMS calls.
	decisions       *prometheus.CounterVec
	decisionLatency prometheus.Histogram
	decisionsBy     atomic.Pointer[map[string]*decisionCounters] // decisionSeries
	decisionsMu     sync.Mutex
	// Node API connections closed at accept for being over a limit.
	nodeAPIRefused *prometheus.CounterVec
	// revocationRefused counts refused clients of the revocation channel.
	revocationRefused *prometheus.CounterVec
	// witnessRefused counts refused clients of the audit witness endpoint.
	witnessRefused *prometheus.CounterVec
	// bundleEndpointRefused counts bundle endpoint connections closed at
	// accept for being over a limit.
	bundleEndpointRefused *prometheus.CounterVec
	// driftEvaluations counts drift evaluations; telemetry counts node
	// telemetry reports by result (drift.go).
	driftEvaluations prometheus.Counter
	telemetry        *prometheus.CounterVec
	// svidsDisplaced counts X509-SVIDs deny-listed to make room for new
	// ones of entries at their bound (docs/agents.md).
	svidsDisplaced prometheus.Counter
}

// decision counts one policy decision (dry-run denials separately).
func (m *metrics) decision(action string, d policy.Decision, took time.Duration) {
	c := m.decisionSeries(action)
	if d.Allowed {
		c.allow.inc(m.decisions, action, "allow")
	} else {
		c.deny.inc(m.decisions, action, "deny")
	}
	if len(d.DryRunDenials) > 0 {
		c.dryRunDeny.inc(m.decisions, action, "dry-run-deny")
	}
	m.decisionLatency.Observe(took.Seconds())
}

// decisionCounters are one action's decision series, each resolved at its
// first count (a series appears when it counts, as before) and then kept:
// the label lookup is not paid on every workload KMS call.
type decisionCounters struct{ allow, deny, dryRunDeny lazyCounter }

type lazyCounter struct {
	c atomic.Pointer[prometheus.Counter]
}

func (l *lazyCounter) inc(vec *prometheus.CounterVec, action, result string) {
	c := l.c.Load()
	if c == nil {
		x := vec.WithLabelValues(action, result) // the same series if two race here
		c = &x
		l.c.Store(c)
	}
	(*c).Inc()
}

// decisionSeries returns action's series. The actions are the KMS's few
// (kms:encrypt, ...), so the map stays small; it is replaced, never
// written, so reading it needs no lock.
func (m *metrics) decisionSeries(action string) *decisionCounters {
	if c := (*m.decisionsBy.Load())[action]; c != nil {
		return c
	}
	m.decisionsMu.Lock()
	defer m.decisionsMu.Unlock()
	old := *m.decisionsBy.Load()
	if c := old[action]; c != nil {
		return c
	}
	c := &decisionCounters{}
	next := make(map[string]*decisionCounters, len(old)+1)
	maps.Copy(next, old)
	next[action] = c
	m.decisionsBy.Store(&next)
	return c
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.decisionsBy.Store(&map[string]*decisionCounters{})
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "api_operations_total",
		Help: "API operations by service, method and result (gRPC code).",
	}, []string{"service", "method", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "ward", Name: "api_operation_duration_seconds",
		Help:    "API operation latency by service and method.",
		Buckets: prometheus.ExponentialBuckets(20e-6, 2.5, 14),
	}, []string{"service", "method"})
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "policy_decisions_total",
		Help: "Policy decisions on workload KMS calls by action and result (allow, deny, dry-run-deny).",
	}, []string{"action", "result"})
	m.decisionLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "ward", Name: "policy_decision_duration_seconds", Help: "Time to decide one request.",
		Buckets: prometheus.ExponentialBuckets(250e-9, 2, 14),
	})
	sealed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ward", Name: "sealed", Help: "1 while the authority is sealed.",
	}, func() float64 {
		if s.Sealed() {
			return 1
		}
		return 0
	})
	auditSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ward", Name: "audit_log_size", Help: "Events in the audit log (tree size of the latest checkpoint).",
	}, func() float64 { return float64(s.auditSize()) })
	m.nodeAPIRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "node_api_connections_refused_total",
		Help: "Node API connections closed at accept for being over a connection limit, by reason (per_source_handshakes, max_handshakes, per_source_anonymous, max_anonymous).",
	}, []string{"reason"})
	m.revocationRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "federation_revocation_clients_refused_total",
		Help: "Clients of the cross-cluster revocation channel refused, by reason (no_client_certificate, not_federated, not_a_server, busy).",
	}, []string{"reason"})
	m.witnessRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "federation_witness_clients_refused_total",
		Help: "Clients asking for this authority's audit checkpoint (audit witnesses) refused, by reason (no_client_certificate, not_federated, not_a_server, busy).",
	}, []string{"reason"})
	m.bundleEndpointRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Name: "federation_bundle_endpoint_connections_refused_total",
		Help: "Bundle endpoint connections closed at accept for being over a connection limit, by reason (per_source, per_source_pending, max_connections).",
	}, []string{"reason"})
	m.driftEvaluations = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ward", Name: "drift_evaluations_total",
		Help: "Drift evaluations of the declared posture (docs/governance.md)."})
	m.telemetry = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ward", Name: "telemetry_reports_total",
		Help: "Node telemetry reports by result (ok, invalid, other_node, rate_limited, too_large)."}, []string{"result"})
	m.svidsDisplaced = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ward", Name: "svids_displaced_total",
		Help: "X509-SVIDs revoked (deny-listed until their NotAfter) to make room for new ones of entries holding the most unexpired SVIDs signed through their agent (docs/agents.md)."})
	m.reg.MustRegister(m.driftEvaluations, m.telemetry, m.svidsDisplaced)
	m.reg.MustRegister(federation.NewCollector(s.federation), m.revocationRefused, m.witnessRefused, m.bundleEndpointRefused)
	m.reg.MustRegister(m.ops, m.latency, m.decisions, m.decisionLatency, m.nodeAPIRefused, sealed, auditSize, &keyAgeCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// keyAgeCollector reports seconds since each key's last rotation.
type keyAgeCollector struct{ s *Server }

var keyAgeDesc = prometheus.NewDesc("ward_key_age_seconds", "Seconds since the key's last rotation.", []string{"key", "classification"}, nil)

func (c *keyAgeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- keyAgeDesc }

func (c *keyAgeCollector) Collect(ch chan<- prometheus.Metric) {
	m, err := c.s.kmsManager()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := m.List(ctx, "")
	if err != nil {
		return
	}
	now := time.Now()
	for _, k := range keys {
		ch <- prometheus.MustNewConstMetric(keyAgeDesc, prometheus.GaugeValue, now.Sub(k.LastRotated).Seconds(), k.Name, k.Classification)
	}
}

func splitMethod(full string) (svc, method string) {
	full = strings.TrimPrefix(full, "/")
	svc, method, _ = strings.Cut(full, "/")
	svc = strings.TrimPrefix(svc, "ward.v1.")
	return
}

// methodMetrics are one method's series, resolved once: the label lookups
// (hashing the label values, a locked map) are not paid per call.
type methodMetrics struct {
	svc, method string
	latency     prometheus.Observer
	ok          prometheus.Counter
}

// method returns full's series. Only registered methods reach the
// interceptors (gRPC refuses others before), so the map stays bounded.
func (m *metrics) method(full string) *methodMetrics {
	if v, ok := m.methods.Load(full); ok {
		return v.(*methodMetrics)
	}
	svc, method := splitMethod(full)
	mm := &methodMetrics{svc: svc, method: method,
		latency: m.latency.WithLabelValues(svc, method),
		ok:      m.ops.WithLabelValues(svc, method, codes.OK.String())}
	v, _ := m.methods.LoadOrStore(full, mm)
	return v.(*methodMetrics)
}

func (m *metrics) observe(full string, start time.Time, err error) {
	mm := m.method(full)
	if c := status.Code(err); c == codes.OK {
		mm.ok.Inc()
	} else {
		m.ops.WithLabelValues(mm.svc, mm.method, c.String()).Inc()
	}
	mm.latency.Observe(time.Since(start).Seconds())
}

func (m *metrics) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		m.observe(info.FullMethod, start, err)
		return resp, err
	}
}

func (m *metrics) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		err := h(srv, ss)
		m.observe(info.FullMethod, start, err)
		return err
	}
}
