package telemetry

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// DefaultInterval is how often proxies and gateways report to their agent.
const DefaultInterval = 15 * time.Second

// MinInterval is the shortest interval Send reports at, whatever the agent
// asks for (the agent takes one report per second per process).
const MinInterval = time.Second

// Send reports build() to the agent over conn (its policy socket) every
// interval until the agent answers, then at the interval the agent asks
// for (its telemetry_interval, at least MinInterval), until ctx ends. The
// agent forgets a process silent for three of its intervals, so a shorter
// one is followed too: with an agent at 1s (the dev mesh) and proxies at
// the 15s default, a proxy's listeners were missing from its node's
// reports (and from drift and scans) most of the time. Failures are logged
// at debug level and retried at the next interval: telemetry never holds
// up the data plane.
func Send(ctx context.Context, conn grpc.ClientConnInterface, interval time.Duration, log *slog.Logger, build func() Report) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	client := wardv1.NewTelemetryClient(conn)
	wait := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = interval
		b, err := json.Marshal(build())
		if err != nil {
			continue
		}
		if len(b) > MaxReportBytes {
			log.Warn("telemetry report too large; not sent", "bytes", len(b), "max", MaxReportBytes)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := client.Report(cctx, &wardv1.TelemetryReport{Report: b})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("telemetry report to the agent failed", "err", err)
			}
			continue
		}
		if d := time.Duration(ack.NextReportAfter) * time.Second; d > 0 && d <= time.Hour {
			interval = max(d, MinInterval)
			wait = interval
		}
	}
}

// Counters reads the sums of the counter family name from gathered
// metrics, by the value of label (all of them when label is ""), keeping
// only samples whose labels match every pair of where.
func Counters(families []*dto.MetricFamily, name, label string, where map[string]string) map[string]uint64 {
	out := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			key := ""
			for _, lp := range m.GetLabel() {
				if v, ok := where[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
				if lp.GetName() == label {
					key = lp.GetValue()
				}
			}
			if c := m.GetCounter(); c != nil {
				out[key] += uint64(c.GetValue())
			}
		}
	}
	return out
}
