package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"

	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/policystream"
	"github.com/wardproject/ward/internal/shared/reconnect"
)

// agentPolicySource follows the node agent's policy socket: the
// authority's versions, pushed as they are applied, verified and compiled
// before they reach the engine.
type agentPolicySource struct {
	conn *grpc.ClientConn
	src  *policystream.Source
}

func newAgentPolicySource(socket string, log *slog.Logger) (*agentPolicySource, error) {
	path := strings.TrimPrefix(socket, "unix://")
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("policy_socket %q: give an absolute path (unix:///run/ward/policy.sock)", socket)
	}
	// Reconnects at most reconnect.MaxDelay apart once the agent is back.
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(local.NewCredentials()), reconnect.DialOption(0))
	if err != nil {
		return nil, fmt.Errorf("policy_socket %s: %w", socket, err)
	}
	return &agentPolicySource{conn: conn, src: policystream.NewSource(conn, log.With("component", "policy"))}, nil
}

// Run implements PolicySource.
func (a *agentPolicySource) Run(ctx context.Context, update func(*policy.Set)) error {
	defer a.conn.Close()
	return a.src.Run(ctx, update)
}

// lastError is the stream's last error while it is not connected, for
// /readyz ("" when connected).
func (a *agentPolicySource) lastError() string {
	st := a.src.Status()
	if st.Connected {
		return ""
	}
	return st.LastError
}
