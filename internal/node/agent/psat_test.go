package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/shared/kubeapi"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// reviewer accepts one token, bound to one agent pod on node n1.
type reviewer struct{ token string }

func (r reviewer) ReviewToken(_ context.Context, token string, auds []string) (kubeapi.TokenReviewStatus, error) {
	var st kubeapi.TokenReviewStatus
	if token != r.token || len(auds) != 1 || auds[0] != nodeapi.DefaultPSATAudience(testTD) {
		return st, nil
	}
	st.Authenticated, st.Audiences = true, auds
	st.User.Username = "system:serviceaccount:ward-system:ward-agent"
	st.User.Extra = map[string][]string{"authentication.kubernetes.io/pod-name": {"ward-agent-1"}, "authentication.kubernetes.io/pod-uid": {"p1"},
		"authentication.kubernetes.io/node-name": {"node-a"}, "authentication.kubernetes.io/node-uid": {"n1"}}
	return st, nil
}

// TestAgentK8sPSAT: the agent attests with the token at k8s_psat.token_path
// (re-read, trimmed) as spiffe://TD/ward/agent/k8s_psat/<cluster>/<node
// uid> and serves its entries; evicted, it tries its pod's token again,
// is refused (the pod may not come back) and says so.
func TestAgentK8sPSAT(t *testing.T) {
	agentID := spiffeid.RequireFromPath(testTD, "/ward/agent/k8s_psat/c1/n1")
	auth := newTestAuthorityWith(t, testTD, time.Hour, time.Hour, func(a *testAuthority) {
		a.psat = map[string]nodeapi.PSATCluster{"c1": {Reviewer: reviewer{token: "tok-1"}, AllowedServiceAccounts: []string{"ward-system:ward-agent"}}}
		a.agents = append(a.agents, agentID)
	})
	auth.addEntry("/web", uidSelector())
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	tok := filepath.Join(dir, "psat")
	os.WriteFile(tok, []byte("tok-1\n"), 0o600)
	cfg.K8sPSAT = &K8sPSAT{Cluster: "c1", TokenPath: tok}
	r := startAgent(t, cfg, nil)
	mustFetch(t, r)
	if got := r.Status().AgentID; got != agentID.String() {
		t.Fatalf("agent ID %s, want %s", got, agentID)
	}
	auth.evict(agentID)
	waitFor(t, "the refused re-attestation", func() bool {
		return auth.count("Attest") >= 2 && strings.Contains(r.logs.String(), "may not attest it again")
	})
	if !r.Status().Evicted || !strings.Contains(r.logs.String(), "attesting again with the pod's token") {
		t.Fatalf("status %+v", r.Status())
	}
}

// TestRefusedAttestationWaits: a refused attestation is retried after the
// interval, not at once (a loop against the authority and TokenReview); a
// refusal of the attested agent re-attests at once.
func TestRefusedAttestationWaits(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = "unused"
	a, err := New(cfg, WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := clk.Now()
	a.nextAttest = now.Add(time.Second)
	a.noteFailure(now, "attest", status.Error(codes.PermissionDenied, "k8s_psat: pod p1 already attested agent"))
	if !a.nextAttest.Equal(now.Add(time.Second)) {
		t.Fatalf("a refused attestation moved the next attempt to %v", a.nextAttest)
	}
	a.noteFailure(now, "sync", status.Error(codes.PermissionDenied, "agent evicted"))
	if !a.nextAttest.Equal(now) {
		t.Fatalf("an evicted agent attests again at %v, want now", a.nextAttest)
	}
}
