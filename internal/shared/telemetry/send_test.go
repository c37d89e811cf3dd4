package telemetry

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// ackConn is an agent that acks every report asking for the next one
// after next seconds, and counts the reports.
type ackConn struct {
	next    uint32
	reports chan struct{}
}

func (c *ackConn) Invoke(_ context.Context, _ string, _, reply any, _ ...grpc.CallOption) error {
	reply.(*wardv1.TelemetryAck).NextReportAfter = c.next
	c.reports <- struct{}{}
	return nil
}

func (c *ackConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	panic("not used")
}

// TestSendFollowsTheAgentsInterval: a sender configured for a long
// interval reports at the agent's shorter one once the agent answers (the
// agent forgets a process silent for three of its intervals: a proxy at
// the 15 s default behind an agent at 1 s was missing from its node's
// reports most of the time).
func TestSendFollowsTheAgentsInterval(t *testing.T) {
	c := &ackConn{next: 1, reports: make(chan struct{}, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Send(ctx, c, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)), func() Report { return Report{Kind: KindProxy} })
	}()
	defer func() { cancel(); <-done }()
	// Three reports: the first (after 1 s), then at the agent's 1 s, not
	// the sender's hour. The wait is bounded generously.
	for i := range 3 {
		select {
		case <-c.reports:
		case <-time.After(time.Minute):
			t.Fatalf("report %d not sent within a minute: the agent's 1s interval was not followed", i+1)
		}
	}
}
