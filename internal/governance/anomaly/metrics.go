package anomaly

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	events, dropped, overflow prometheus.Counter
	hookSent, hookFailed      prometheus.Counter
	hookDropped               prometheus.Counter
	primed, primeErrors       prometheus.Counter
	alerts                    *prometheus.CounterVec
	series                    prometheus.Gauge
}

func newMetrics() metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ward", Subsystem: "anomaly", Name: name, Help: help})
	}
	return metrics{
		events:      c("events_scored_total", "Audit events the anomaly detector scored."),
		dropped:     c("events_dropped_total", "Audit events not scored because the detector's queue was full (the audit path never waits)."),
		overflow:    c("series_overflow_total", "Events on a new series not tracked because max_series was reached."),
		hookSent:    c("webhook_sent_total", "Alerts delivered to the webhook (2xx)."),
		hookFailed:  c("webhook_failures_total", "Webhook deliveries that failed (error, timeout or non-2xx)."),
		hookDropped: c("webhook_dropped_total", "Alerts not sent to the webhook because its queue was full."),
		primed:      c("events_primed_total", "Past audit events read to build the baseline before scoring (at start)."),
		primeErrors: c("prime_errors_total", "Failures reading past audit events to build the baseline."),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ward", Subsystem: "anomaly", Name: "alerts_total",
			Help: "Anomaly alerts raised, by kind."}, []string{"kind"}),
		series: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ward", Subsystem: "anomaly", Name: "series",
			Help: "Baselines tracked: (caller, key, operation) series, (caller, key) pairs and per-caller denial series."}),
	}
}

// Collectors returns the detector's Prometheus collectors, to register
// with the process's registry.
func (d *Detector) Collectors() []prometheus.Collector {
	for _, k := range []string{KindRestrictedFirstUse, KindDecryptBurst, KindDenialSpike, KindNewTrustDomain} {
		d.m.alerts.WithLabelValues(k)
	}
	return []prometheus.Collector{d.m.events, d.m.dropped, d.m.overflow, d.m.hookSent, d.m.hookFailed, d.m.hookDropped, d.m.primed, d.m.primeErrors, d.m.alerts, d.m.series}
}
