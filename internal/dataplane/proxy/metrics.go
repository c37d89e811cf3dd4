package proxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the proxy's Prometheus series (prefix ward_proxy_); see
// docs/proxy.md for the list.
type metrics struct {
	reg             *prometheus.Registry
	open            *prometheus.GaugeVec
	total           *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	handshakeFail   *prometheus.CounterVec
	tlsVersion      *prometheus.CounterVec
	decisions       *prometheus.CounterVec
	dryRun          *prometheus.CounterVec
	decisionSeconds prometheus.Histogram
	rejected        *prometheus.CounterVec
	policyClosed    *prometheus.CounterVec
	policyVersion   prometheus.Gauge
	policyLoaded    prometheus.Gauge
	policyErrors    prometheus.Counter
	serviceDials    *prometheus.CounterVec
	resumed         *prometheus.CounterVec
	ticketsRefused  *prometheus.CounterVec
}

func newMetrics(svidExpiry func() float64, chainHits, chainMisses *atomic.Int64) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ward_proxy_connections_open",
		Help: "Connections currently open, by listener and direction (inbound|outbound)."}, []string{"listener", "direction"})
	m.total = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_connections_total",
		Help: "Connections accepted, by listener and direction."}, []string{"listener", "direction"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_bytes_total",
		Help: "Bytes forwarded: in = from the connecting side to the other side, out = back."}, []string{"listener", "direction"})
	m.handshakeFail = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_handshake_failures_total",
		Help: "Failed TLS handshakes by listener and reason."}, []string{"listener", "reason"})
	m.tlsVersion = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_tls_handshakes_total",
		Help: "Completed TLS handshakes by listener, TLS version and key exchange group."}, []string{"listener", "version", "group"})
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_decisions_total",
		Help: "Enforced policy decisions by listener and result (allow, deny) and cause (permit, forbid, default-deny, deny-list, no-policy)."},
		[]string{"listener", "result", "cause"})
	m.dryRun = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_dry_run_decisions_total",
		Help: "Decisions that dry-run policies would change: would_deny (allowed, a dry-run forbid matched), would_allow (denied, a dry-run permit matched). They never block."},
		[]string{"listener", "result"})
	m.decisionSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ward_proxy_decision_seconds",
		Help:    "Time to decide a connection against the policy.",
		Buckets: []float64{1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2}})
	m.serviceDials = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_service_attempts_total",
		Help: "Attempts of outbound listeners naming a service (service: name@td) to reach one of its clusters, by listener, cluster (trust domain) and result (ok, dial_failed, handshake_failed, skipped_down)."},
		[]string{"listener", "cluster", "result"})
	m.resumed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_tls_resumed_total",
		Help: "Completed TLS handshakes that resumed a session (verified and decided as a full one), by listener and direction."},
		[]string{"listener", "direction"})
	m.ticketsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_tls_session_tickets_refused_total",
		Help: "Session tickets presented to inbound listeners and refused (a full handshake follows), by reason (unknown_key: rotated out, dropped or not ours; expired; other_listener; own_svid_changed; trust_changed; invalid; not_tls13)."},
		[]string{"reason"})
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_connections_rejected_total",
		Help: "Connections refused before the handshake or the app dial, by reason (max_connections, per_source, per_source_handshakes, draining, dial_app, dial_remote)."},
		[]string{"listener", "reason"})
	m.policyClosed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_proxy_connections_closed_by_policy_total",
		Help: "Open connections closed because a new policy version or deny-list denies their peer."}, []string{"listener"})
	m.policyVersion = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ward_proxy_policy_version",
		Help: "Version of the policy set in force (0: none)."})
	m.policyLoaded = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ward_proxy_policy_loaded",
		Help: "1 when a valid policy set is loaded, 0 when the proxy denies everything (fail closed)."})
	m.policyErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "ward_proxy_policy_load_errors_total",
		Help: "Policy updates rejected (the previous set stays in force)."})
	for _, c := range []prometheus.Collector{m.open, m.total, m.bytes, m.handshakeFail, m.tlsVersion, m.decisions, m.dryRun,
		m.decisionSeconds, m.rejected, m.policyClosed, m.policyVersion, m.policyLoaded, m.policyErrors, m.serviceDials, m.resumed, m.ticketsRefused} {
		f(c)
	}
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ward_proxy_svid_expiry_seconds",
		Help: "Seconds until the proxy's current X509-SVID expires (negative: expired)."}, svidExpiry))
	for _, r := range []struct {
		result string
		n      *atomic.Int64
	}{{"cached", chainHits}, {"verified", chainMisses}} {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ward_proxy_peer_chain_verifications_total",
			Help:        "Peer X509-SVID chains checked at handshakes: verified (against the bundle) or cached (the same chain under the same bundle, verified before, within its validity).",
			ConstLabels: prometheus.Labels{"result": r.result}}, func() float64 { return float64(r.n.Load()) }))
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
