package nodeapi

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// telemetrySink stands in for the server's ReportTelemetry: it decodes,
// refuses a report naming another node, and keeps the last per node.
type telemetrySink struct {
	mu      sync.Mutex
	got     map[string]telemetry.NodeReport
	refused []string
}

func (s *telemetrySink) put(node string, b []byte) error {
	r, err := telemetry.DecodeNodeReport(b)
	if err != nil {
		return err
	}
	if r.Node != "" && r.Node != node {
		return ErrOtherNode{Msg: "telemetry for " + r.Node + " sent by " + node}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got[node] = r
	return nil
}

func report(t *testing.T, node string) []byte {
	t.Helper()
	b, err := json.Marshal(telemetry.NodeReport{Node: node, Agent: telemetry.Report{Kind: telemetry.KindAgent, FIPS: true}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The attacks on the telemetry path: a report without an agent SVID, from
// a workload, for another node, oversize, and a flood. Each is refused,
// counted, and stores nothing; the honest report is taken.
func TestTelemetryAttacks(t *testing.T) {
	sink := &telemetrySink{got: map[string]telemetry.NodeReport{}}
	var reasonsMu sync.Mutex
	reasons := map[string]int{}
	h := newHarnessWith(t, func(c *Config) {
		c.Telemetry = sink.put
		c.TelemetryInterval = time.Hour
		c.OnTelemetry = func(r string) { reasonsMu.Lock(); reasons[r]++; reasonsMu.Unlock() }
	})
	ctx := context.Background()
	a := h.agentCaller(t)
	b := h.agentCaller(t)
	ta := wardv1.NewTelemetryClient(h.conn(t, a.svid))

	// No certificate: refused before any handler.
	_, err := wardv1.NewTelemetryClient(h.conn(t, nil)).Report(ctx, &wardv1.TelemetryReport{Report: report(t, "")})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without an SVID: %v", err)
	}
	// A workload SVID is no node.
	_, err = wardv1.NewTelemetryClient(h.conn(t, h.caSigned(t, "/app/payments"))).Report(ctx, &wardv1.TelemetryReport{Report: report(t, "")})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("as a workload: %v", err)
	}
	// Oversize: refused before decoding (and before the rate limit).
	big := make([]byte, telemetry.MaxNodeReportBytes+1)
	if _, err := ta.Report(ctx, &wardv1.TelemetryReport{Report: big}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversize: %v", err)
	}
	// A report for another node.
	_, err = ta.Report(ctx, &wardv1.TelemetryReport{Report: report(t, b.svid.ID.String())})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "sent by "+a.svid.ID.String()) {
		t.Fatalf("for another node: %v", err)
	}
	if len(sink.got) != 0 {
		t.Fatalf("refused reports were stored: %v", sink.got)
	}
	// Agent b reports for itself (naming itself is fine).
	if _, err := wardv1.NewTelemetryClient(h.conn(t, b.svid)).Report(ctx, &wardv1.TelemetryReport{Report: report(t, b.svid.ID.String())}); err != nil {
		t.Fatal(err)
	}
	// A flood from a: the report above (refused for naming b) counted
	// against a's rate, so every one of these is refused until the half
	// interval has passed.
	for i := 0; i < 50; i++ {
		if _, err := ta.Report(ctx, &wardv1.TelemetryReport{Report: report(t, "")}); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("flood report %d: %v", i, err)
		}
	}
	h.clock.Advance(31 * time.Minute)
	ack, err := ta.Report(ctx, &wardv1.TelemetryReport{Report: report(t, "")})
	if err != nil || ack.NextReportAfter != 3600 {
		t.Fatalf("after the interval: %v %v", ack, err)
	}
	if len(sink.got) != 2 {
		t.Fatalf("stored %d nodes, want 2", len(sink.got))
	}
	reasonsMu.Lock()
	defer reasonsMu.Unlock()
	if reasons["too_large"] != 1 || reasons["rate_limited"] != 50 {
		t.Fatalf("refusals counted: %v", reasons)
	}
}
