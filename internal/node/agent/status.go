package agent

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Status is the agent's health as /status reports it.
type Status struct {
	TrustDomain string `json:"trust_domain"`
	// AgentID and AgentSVIDExpires describe the agent's own SVID (empty
	// while not attested).
	AgentID          string    `json:"agent_id,omitempty"`
	AgentSVIDExpires time.Time `json:"agent_svid_expires,omitzero"`
	// Evicted: the authority refused this agent; no new SVIDs until it
	// attests again.
	Evicted bool `json:"evicted"`
	// LastSync is the last successful sync with the authority;
	// SecondsSinceLastSync is -1 if there was none.
	LastSync             time.Time `json:"last_sync,omitzero"`
	SecondsSinceLastSync float64   `json:"seconds_since_last_sync"`
	// LastError is the last failed exchange with the authority ("" after a
	// successful sync).
	LastError string `json:"last_error,omitempty"`
	Entries   int    `json:"entries"`
	SVIDs     int    `json:"svids"`
	// SoonestSVIDExpiry is when the first held X509-SVID expires if it is
	// not rotated.
	SoonestSVIDExpiry time.Time `json:"soonest_svid_expiry,omitzero"`
	BundleSequence    uint64    `json:"bundle_sequence"`
	// Network is the WireGuard tunnel table (with a network section).
	Network *NetworkStatus `json:"network,omitempty"`
}

// Status reports the agent's health and how stale its state is.
func (a *Agent) Status() Status { return a.status(true) }

// status is Status, with the tunnel table (which reads the WireGuard
// device) only when withNet.
func (a *Agent) status(withNet bool) Status {
	now := a.now()
	exp := a.soonestExpiry()
	a.mu.RLock()
	st := Status{TrustDomain: a.td.Name(), Evicted: a.evicted, LastSync: a.lastSync, LastError: a.lastErr,
		Entries: len(a.entries), SVIDs: len(a.svids), SoonestSVIDExpiry: exp, BundleSequence: a.bundleSeq,
		SecondsSinceLastSync: -1}
	a.mu.RUnlock()
	if !st.LastSync.IsZero() {
		st.SecondsSinceLastSync = now.Sub(st.LastSync).Seconds()
	}
	if sv := a.agentSVID.Load(); sv != nil {
		st.AgentID, st.AgentSVIDExpires = sv.ID.String(), sv.Certificates[0].NotAfter
	}
	if withNet {
		st.Network = a.networkStatus()
	}
	return st
}

// metrics are the agent's Prometheus collectors.
type metrics struct {
	reg      *prometheus.Registry
	failures *prometheus.CounterVec
	issued   prometheus.Counter
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ward", Subsystem: "agent", Name: "authority_failures_total",
		Help: "Failed exchanges with the authority, by operation.",
	}, []string{"operation"})
	m.issued = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ward", Subsystem: "agent", Name: "x509_svids_issued_total",
		Help: "X509-SVIDs received from the authority.",
	})
	gauge := func(name, help string, f func(Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ward", Subsystem: "agent", Name: name, Help: help},
			func() float64 { return f(a.status(false)) })
	}
	m.reg.MustRegister(m.failures, m.issued,
		gauge("seconds_since_last_sync", "Seconds since the last successful sync with the authority (-1: never).",
			func(s Status) float64 { return s.SecondsSinceLastSync }),
		gauge("soonest_svid_expiry_seconds", "Seconds until the first held X509-SVID expires (0 if none is held).",
			func(s Status) float64 {
				if s.SoonestSVIDExpiry.IsZero() {
					return 0
				}
				return time.Until(s.SoonestSVIDExpiry).Seconds()
			}),
		gauge("entries", "Registration entries of this node.", func(s Status) float64 { return float64(s.Entries) }),
		gauge("x509_svids", "X509-SVIDs held.", func(s Status) float64 { return float64(s.SVIDs) }),
		gauge("evicted", "1 while the authority refuses this agent.", func(s Status) float64 {
			if s.Evicted {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "ward", Subsystem: "agent", Name: "audit_log_rollback_total",
			Help: "Sync responses whose audit checkpoint did not provably extend the one this agent verified earlier (log truncated, rolled back, forked or re-keyed)."},
			func() float64 { return float64(a.audit.rollbacks.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ward", Subsystem: "agent", Name: "audit_log_rollback",
			Help: "1 while the authority's latest audit checkpoint does not extend the remembered one."},
			func() float64 {
				if a.audit.alarm.Load() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ward", Subsystem: "agent", Name: "audit_checkpoint_size",
			Help: "Size of the newest audit checkpoint this agent verified."},
			func() float64 { return float64(a.audit.knownSize()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.cfg.Network != nil {
		m.reg.MustRegister(newNetCollector(a))
	}
	return m
}

// healthServer serves /metrics (Prometheus) and /status (JSON).
func (a *Agent) healthServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.met.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.Status())
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
