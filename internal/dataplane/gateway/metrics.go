package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Refusals that are not about the ClientHello (label values of
// ward_gateway_refused_total next to the Reason constants).
const (
	ReasonMaxConnections = "max_connections"    // the gateway holds max_connections
	ReasonPerSource      = "per_source"         // the source holds max_connections_per_source
	ReasonPerSourceHello = "per_source_pending" // the source holds max_pending_per_source connections without a ClientHello
	ReasonDraining       = "draining"           // shutting down
	ReasonDialFailed     = "dial_failed"        // the route's inbound proxy could not be reached
)

// refusalReasons are every label value of ward_gateway_refused_total,
// exported at 0 from the start.
var refusalReasons = []string{ReasonNotTLS, ReasonTooLarge, ReasonMalformed, ReasonTimeout, ReasonEOF, ReasonNoSNI, ReasonUnknown,
	ReasonMaxConnections, ReasonPerSource, ReasonPerSourceHello, ReasonDraining, ReasonDialFailed}

// metrics are the gateway's Prometheus series (prefix ward_gateway_); see
// docs/gateway.md.
type metrics struct {
	reg         *prometheus.Registry
	open        *prometheus.GaugeVec
	total       *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	refused     *prometheus.CounterVec
	helloBytes  prometheus.Histogram
	helloSecond prometheus.Histogram
	routes      *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ward_gateway_connections_open",
		Help: "Forwarded connections currently open, by route (service)."}, []string{"route"})
	m.total = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_gateway_connections_total",
		Help: "Connections forwarded to a route's inbound proxy, by route (service)."}, []string{"route"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_gateway_bytes_total",
		Help: "Bytes spliced by route: in = from the caller to the inbound proxy (ClientHello included), out = back."}, []string{"route", "direction"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ward_gateway_refused_total",
		Help: "Connections refused (nothing forwarded), by reason: not_tls, too_large, malformed, timeout, eof, no_sni, unknown_sni, max_connections, per_source, per_source_pending, draining, dial_failed."},
		[]string{"reason"})
	m.helloBytes = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ward_gateway_client_hello_bytes",
		Help: "Size of the routed ClientHellos (their records, headers included).", Buckets: []float64{256, 512, 1024, 1536, 2048, 4096, 8192, 16384, 32768}})
	m.helloSecond = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ward_gateway_route_seconds",
		Help:    "From accept to the ClientHello forwarded to the route's inbound proxy (read, parse, dial, write).",
		Buckets: []float64{5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1, 1}})
	m.routes = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ward_gateway_route_info",
		Help: "The configured routes (1 each): service, the SNI name it answers and its forward address."}, []string{"route", "sni", "forward"})
	for _, c := range []prometheus.Collector{m.open, m.total, m.bytes, m.refused, m.helloBytes, m.helloSecond, m.routes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		m.reg.MustRegister(c)
	}
	for _, r := range refusalReasons {
		m.refused.WithLabelValues(r)
	}
	return m
}

// setRoutes makes ward_gateway_route_info list routes and their series
// present.
func (m *metrics) setRoutes(routes []*Route) {
	m.routes.Reset()
	for _, r := range routes {
		m.routes.WithLabelValues(r.Service, r.sni, r.Forward).Set(1)
		m.total.WithLabelValues(r.Service)
		m.open.WithLabelValues(r.Service)
		m.bytes.WithLabelValues(r.Service, "in")
		m.bytes.WithLabelValues(r.Service, "out")
	}
}
