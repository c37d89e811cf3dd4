// Package agenttest runs a real ward agent (internal/node/agent) inside a
// test's process, for tests that need SVIDs from a Workload API socket.
package agenttest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// Run starts the agent until the test ends (its context is
// ctx's child) and writes its log to logs at level; the log is shown if the
// test failed.
func Run(t testing.TB, ctx context.Context, cfg *agent.Config, logs *syncbuf.Buffer, level slog.Level) {
	t.Helper()
	ag, err := agent.New(cfg, agent.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))))
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { ag.Run(actx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
}
