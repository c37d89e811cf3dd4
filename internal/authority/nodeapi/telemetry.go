package nodeapi

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// DefaultTelemetryInterval is how often an agent reports telemetry; the
// Node API takes at most one report per half interval from each agent.
const DefaultTelemetryInterval = 15 * time.Second

// maxTelemetryAgents bounds the per-agent rate state; past it, the state
// of agents not heard from for an interval is dropped.
const maxTelemetryAgents = 100000

// telemetryService takes each agent's telemetry report (docs/governance.md):
// only an authenticated agent may call it (authenticate), for its own node
// only (the report's node, when named, must be the caller), one report per
// half interval per agent, at most telemetry.MaxNodeReportBytes.
type telemetryService struct {
	wardv1.UnimplementedTelemetryServer
	s        *Server
	interval time.Duration

	mu   sync.Mutex
	last map[string]time.Time // agent ID → last accepted report
}

func newTelemetryService(s *Server) *telemetryService {
	iv := s.cfg.TelemetryInterval
	if iv <= 0 {
		iv = DefaultTelemetryInterval
	}
	return &telemetryService{s: s, interval: iv, last: map[string]time.Time{}}
}

func (t *telemetryService) refuse(reason string) {
	if t.s.cfg.OnTelemetry != nil {
		t.s.cfg.OnTelemetry(reason)
	}
}

// admit takes one report of agent at now, or says when the next may come.
func (t *telemetryService) admit(agent string, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if last, ok := t.last[agent]; ok {
		if wait := last.Add(t.interval / 2).Sub(now); wait > 0 {
			return wait, false
		}
	}
	if _, ok := t.last[agent]; !ok && len(t.last) >= maxTelemetryAgents {
		for a, at := range t.last {
			if now.Sub(at) > t.interval {
				delete(t.last, a)
			}
		}
		if len(t.last) >= maxTelemetryAgents {
			return t.interval, false
		}
	}
	t.last[agent] = now
	return 0, true
}

func (t *telemetryService) Report(ctx context.Context, r *wardv1.TelemetryReport) (*wardv1.TelemetryAck, error) {
	agent := agentFrom(ctx)
	if agent.IsZero() {
		return nil, status.Error(codes.Unauthenticated, "telemetry needs an agent SVID")
	}
	if len(r.Report) > telemetry.MaxNodeReportBytes {
		t.refuse("too_large")
		return nil, status.Errorf(codes.ResourceExhausted, "telemetry report is %d bytes: at most %d (fewer processes or listeners per node)", len(r.Report), telemetry.MaxNodeReportBytes)
	}
	if wait, ok := t.admit(agent.String(), t.s.cfg.Clock()); !ok {
		t.refuse("rate_limited")
		return nil, status.Errorf(codes.ResourceExhausted, "telemetry of %s: one report per %s; the next in %s", agent, t.interval/2, wait.Round(time.Millisecond))
	}
	if err := t.s.cfg.Telemetry(agent.String(), r.Report); err != nil {
		code := codes.InvalidArgument
		if isOtherNode(err) {
			code = codes.PermissionDenied
		}
		t.s.cfg.Log.Warn("telemetry report refused", "agent", agent.String(), "err", err)
		return nil, status.Errorf(code, "telemetry of %s refused: %v", agent, err)
	}
	return &wardv1.TelemetryAck{NextReportAfter: uint32(t.interval / time.Second)}, nil
}

// ErrOtherNode is what Config.Telemetry returns (wrapped) for a report
// naming another node than its sender.
type ErrOtherNode struct{ Msg string }

func (e ErrOtherNode) Error() string { return e.Msg }

func isOtherNode(err error) bool {
	_, ok := err.(ErrOtherNode)
	return ok
}
