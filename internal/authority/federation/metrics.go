package federation

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	ageDesc = prometheus.NewDesc("ward_federation_bundle_age_seconds",
		"Seconds since the foreign trust domain's bundle was last refreshed from its endpoint (or bootstrapped).",
		[]string{"trust_domain"}, nil)
	staleDesc = prometheus.NewDesc("ward_federation_bundle_stale",
		"1 when the foreign bundle is older than the configured number of refresh hints or unusable.",
		[]string{"trust_domain"}, nil)
	seqDesc = prometheus.NewDesc("ward_federation_bundle_sequence",
		"spiffe_sequence of the foreign bundle in use.", []string{"trust_domain"}, nil)
	refreshDesc = prometheus.NewDesc("ward_federation_refreshes_total",
		"Bundle refreshes by trust domain and result (ok, error, refused) since this authority unsealed.",
		[]string{"trust_domain", "result"}, nil)
	revSeqDesc = prometheus.NewDesc("ward_federation_revocations_sequence",
		"Sequence of the last revocations accepted from the trust domain's authority (cross-cluster revocation).",
		[]string{"trust_domain"}, nil)
	revAgeDesc = prometheus.NewDesc("ward_federation_revocations_age_seconds",
		"Seconds since revocations were last accepted from the trust domain's authority (a new sequence; an idle channel does not refresh it).",
		[]string{"trust_domain"}, nil)
	revErrDesc = prometheus.NewDesc("ward_federation_revocation_channel_error",
		"1 while the revocation channel with the trust domain's authority is failing or its last update was refused.",
		[]string{"trust_domain"}, nil)
	witnessAlertDesc = prometheus.NewDesc("ward_federation_witness_alert",
		"1 once the trust domain's audit log did not extend what this authority witnessed (reason went_backwards, forked, inconsistent, other_log, key_changed); it stays until the relationship is removed.",
		[]string{"trust_domain", "reason"}, nil)
	ownLogAlertDesc = prometheus.NewDesc("ward_federation_witness_own_log_alert",
		"1 while this authority's own audit log does not extend the checkpoint the federated witness trust_domain cosigned (reason went_backwards, forked, inconsistent): it was rolled back in storage.",
		[]string{"trust_domain", "reason"}, nil)
	witnessSizeDesc = prometheus.NewDesc("ward_federation_witness_size",
		"Size of the newest checkpoint of the trust domain's audit log this authority witnessed and cosigned.",
		[]string{"trust_domain"}, nil)
	witnessAgeDesc = prometheus.NewDesc("ward_federation_witness_age_seconds",
		"Seconds since this authority last cosigned a new checkpoint of the trust domain's audit log.",
		[]string{"trust_domain"}, nil)
	witnessErrDesc = prometheus.NewDesc("ward_federation_witness_error",
		"1 while the last attempt to witness the trust domain's audit log failed, was refused or raised an alert.",
		[]string{"trust_domain"}, nil)
	witnessRoundsDesc = prometheus.NewDesc("ward_federation_witness_rounds_total",
		"Rounds witnessing the trust domain's audit log by result (ok, error, refused, alert) since this authority unsealed.",
		[]string{"trust_domain", "result"}, nil)
	relayDroppedDesc = prometheus.NewDesc("ward_federation_network_relay_dropped_total",
		"Federated tunnels or prefixes not relayed to this cluster's nodes, by trust domain and reason (each counted once per change of the relayed tunnels; docs/network.md).",
		[]string{"trust_domain", "reason"}, nil)
)

type collector struct{ get func() *Manager }

// NewCollector returns a Prometheus collector of the federation metrics of
// whatever Manager get returns (nil while sealed: no series).
func NewCollector(get func() *Manager) prometheus.Collector { return collector{get} }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ageDesc
	ch <- staleDesc
	ch <- seqDesc
	ch <- refreshDesc
	ch <- revSeqDesc
	ch <- revAgeDesc
	ch <- revErrDesc
	ch <- witnessAlertDesc
	ch <- ownLogAlertDesc
	ch <- witnessSizeDesc
	ch <- witnessAgeDesc
	ch <- witnessErrDesc
	ch <- witnessRoundsDesc
	ch <- relayDroppedDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.get()
	if m == nil {
		return
	}
	now := m.opts.Clock()
	for _, st := range m.List() {
		td := st.TrustDomain.Name()
		if !st.LastRefresh.IsZero() {
			ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, now.Sub(st.LastRefresh).Seconds(), td)
		}
		stale := 0.0
		if st.Stale {
			stale = 1
		}
		ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, stale, td)
		if st.HasSequence {
			ch <- prometheus.MustNewConstMetric(seqDesc, prometheus.GaugeValue, float64(st.Sequence), td)
		}
		if st.Profile == ProfileSPIFFE {
			rs := m.Revocation(st.TrustDomain)
			if rs.Has {
				ch <- prometheus.MustNewConstMetric(revSeqDesc, prometheus.GaugeValue, float64(rs.Sequence), td)
				ch <- prometheus.MustNewConstMetric(revAgeDesc, prometheus.GaugeValue, now.Sub(rs.ReceivedAt).Seconds(), td)
			}
			failing := 0.0
			if rs.LastError != "" {
				failing = 1
			}
			ch <- prometheus.MustNewConstMetric(revErrDesc, prometheus.GaugeValue, failing, td)
			ws := st.Witness
			if ws.Alert != nil {
				ch <- prometheus.MustNewConstMetric(witnessAlertDesc, prometheus.GaugeValue, 1, td, ws.Alert.Reason)
			}
			if a := ws.OwnLogAlert; a != nil {
				ch <- prometheus.MustNewConstMetric(ownLogAlertDesc, prometheus.GaugeValue, 1, td, a.Reason)
			}
			if ws.Checkpoint != nil {
				ch <- prometheus.MustNewConstMetric(witnessSizeDesc, prometheus.GaugeValue, float64(ws.Checkpoint.Size), td)
			}
			if !ws.WitnessedAt.IsZero() {
				ch <- prometheus.MustNewConstMetric(witnessAgeDesc, prometheus.GaugeValue, now.Sub(ws.WitnessedAt).Seconds(), td)
			}
			if !ws.LastAttempt.IsZero() || ws.Checkpoint != nil || ws.Alert != nil {
				werr := 0.0
				if ws.LastError != "" || ws.Alert != nil {
					werr = 1
				}
				ch <- prometheus.MustNewConstMetric(witnessErrDesc, prometheus.GaugeValue, werr, td)
			}
		}
	}
	for k, n := range m.relayDropCounts() {
		ch <- prometheus.MustNewConstMetric(relayDroppedDesc, prometheus.CounterValue, float64(n), k[0], k[1])
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for td, k := range m.stats {
		ch <- prometheus.MustNewConstMetric(refreshDesc, prometheus.CounterValue, float64(k.ok), td.Name(), "ok")
		ch <- prometheus.MustNewConstMetric(refreshDesc, prometheus.CounterValue, float64(k.failed), td.Name(), "error")
		ch <- prometheus.MustNewConstMetric(refreshDesc, prometheus.CounterValue, float64(k.refused), td.Name(), "refused")
		if k.witnessOK+k.witnessFailed+k.witnessRefused+k.witnessAlert > 0 {
			ch <- prometheus.MustNewConstMetric(witnessRoundsDesc, prometheus.CounterValue, float64(k.witnessOK), td.Name(), "ok")
			ch <- prometheus.MustNewConstMetric(witnessRoundsDesc, prometheus.CounterValue, float64(k.witnessFailed), td.Name(), "error")
			ch <- prometheus.MustNewConstMetric(witnessRoundsDesc, prometheus.CounterValue, float64(k.witnessRefused), td.Name(), "refused")
			ch <- prometheus.MustNewConstMetric(witnessRoundsDesc, prometheus.CounterValue, float64(k.witnessAlert), td.Name(), "alert")
		}
	}
}
