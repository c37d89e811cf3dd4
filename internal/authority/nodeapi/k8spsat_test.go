package nodeapi

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/kubeapi"
)

// fakeReview plays a cluster's TokenReview: tokens it knows, each issued
// for one audience, answer as the apiserver would.
type fakeReview struct {
	mu     sync.Mutex
	tokens map[string]fakeToken
	down   bool
	calls  int
}

type fakeToken struct {
	aud, ns, sa, pod, podUID, node, nodeUID string
	revoked                                 bool
	// lieAudiences: the reviewer says authenticated but names other
	// audiences (an apiserver that ignores spec.audiences).
	lieAudiences bool
}

func (f *fakeReview) ReviewToken(_ context.Context, token string, auds []string) (kubeapi.TokenReviewStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var st kubeapi.TokenReviewStatus
	if f.down {
		return st, errors.New("dial tcp: connection refused")
	}
	tk, ok := f.tokens[token]
	if !ok || tk.revoked || !slices.Contains(auds, tk.aud) && !tk.lieAudiences {
		st.Error = "[invalid bearer token, token lookup failed]"
		return st, nil
	}
	st.Authenticated = true
	st.Audiences = []string{tk.aud}
	st.User.Username = "system:serviceaccount:" + tk.ns + ":" + tk.sa
	if tk.pod != "" {
		st.User.Extra = map[string][]string{extraPodName: {tk.pod}, extraPodUID: {tk.podUID}, extraNodeName: {tk.node}, extraNodeUID: {tk.nodeUID}}
	}
	return st, nil
}

// attestPSAT attests over one shared unauthenticated connection (the
// Node API bounds pre-authentication connections per source).
func (h *harness) attestPSAT(t testing.TB, cluster, token string) (*x509svid.SVID, error) {
	t.Helper()
	h.anonOnce.Do(func() { h.anon = h.client(t, nil) })
	stream, err := h.anon.Attest(context.Background())
	if err != nil {
		return nil, err
	}
	der, key := csr(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: der, Step: &wardv1.AttestRequest_K8SPsat{K8SPsat: &wardv1.K8SPsatAttestation{Cluster: cluster, Token: token}}}); err != nil {
		return nil, err
	}
	r, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return svidOf(t, r.GetSvid().GetChain(), key), nil
}

// TestK8sPSATAttestation: a pod-bound token of an allowed service account
// attests the node under its node UID with the k8s_psat selectors; every
// attack is refused and audited: a token for another audience, an expired
// or revoked one (TokenReview: not authenticated), another service
// account, a token bound to no pod, an unknown cluster; the same pod's
// token presented again (replay, or a second agent) while the first
// agent's SVID is valid, or after it was evicted. A new pod on the same
// node attests again and takes the node over; the old SVID stops working.
func TestK8sPSATAttestation(t *testing.T) {
	rev := &fakeReview{tokens: map[string]fakeToken{
		"good":      {aud: "ward:node.example.org", ns: "ward-system", sa: "ward-agent", pod: "ward-agent-abcde", podUID: "0b6a4f8e-1111-4d2c-9a3e-5c1f7d2e8a90", node: "node-a", nodeUID: "5d3c2b1a-2222-4e5f-8a9b-0c1d2e3f4a5b"},
		"other-aud": {aud: "vault", ns: "ward-system", sa: "ward-agent", pod: "p", podUID: "u1", node: "node-a", nodeUID: "n1"},
		"lying-aud": {aud: "vault", lieAudiences: true, ns: "ward-system", sa: "ward-agent", pod: "p", podUID: "u1", node: "node-a", nodeUID: "n1"},
		"revoked":   {aud: "ward:node.example.org", revoked: true, ns: "ward-system", sa: "ward-agent", pod: "p", podUID: "u1", node: "node-a", nodeUID: "n1"},
		"other-sa":  {aud: "ward:node.example.org", ns: "default", sa: "default", pod: "p", podUID: "u1", node: "node-a", nodeUID: "n1"},
		"unbound":   {aud: "ward:node.example.org", ns: "ward-system", sa: "ward-agent"},
		"bad-name":  {aud: "ward:node.example.org", ns: "ward-system", sa: "ward-agent", pod: "p", podUID: "u1/../x", node: "node-a", nodeUID: "n1"},
		"new-pod":   {aud: "ward:node.example.org", ns: "ward-system", sa: "ward-agent", pod: "ward-agent-fghij", podUID: "7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d", node: "node-a", nodeUID: "5d3c2b1a-2222-4e5f-8a9b-0c1d2e3f4a5b"},
	}}
	h := newHarnessWith(t, func(c *Config) {
		c.PSATClusters = map[string]PSATCluster{"c1": {Reviewer: rev, AllowedServiceAccounts: []string{"ward-system:ward-agent"}}}
	})
	ctx := context.Background()
	sv, err := h.attestPSAT(t, "c1", "good")
	if err != nil {
		t.Fatal(err)
	}
	wantID := "spiffe://node.example.org/ward/agent/k8s_psat/c1/5d3c2b1a-2222-4e5f-8a9b-0c1d2e3f4a5b"
	if sv.ID.String() != wantID {
		t.Fatalf("agent ID %s, want %s", sv.ID, wantID)
	}
	ag, err := h.reg.GetAgent(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range ag.Selectors {
		got = append(got, s.String())
	}
	want := []string{"k8s_psat:agent_node_name:node-a", "k8s_psat:agent_node_uid:5d3c2b1a-2222-4e5f-8a9b-0c1d2e3f4a5b", "k8s_psat:agent_ns:ward-system",
		"k8s_psat:agent_pod_name:ward-agent-abcde", "k8s_psat:agent_pod_uid:0b6a4f8e-1111-4d2c-9a3e-5c1f7d2e8a90", "k8s_psat:agent_sa:ward-agent", "k8s_psat:cluster:c1"}
	if ag.AttestationType != "k8s_psat" || !slices.Equal(got, want) {
		t.Fatalf("agent record %s %v, want %v", ag.AttestationType, got, want)
	}
	if _, err := h.client(t, sv).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("sync with the PSAT agent SVID: %v", err)
	}

	refused := func(name, cluster, token string, code codes.Code, msg string) {
		t.Helper()
		_, err := h.attestPSAT(t, cluster, token)
		if status.Code(err) != code || !strings.Contains(err.Error(), msg) {
			t.Fatalf("%s: %v, want %s containing %q", name, err, code, msg)
		}
	}
	refused("wrong audience", "c1", "other-aud", codes.PermissionDenied, "refused the token")
	refused("reviewer ignoring the audience", "c1", "lying-aud", codes.PermissionDenied, `not valid for audience "ward:node.example.org"`)
	refused("expired or revoked", "c1", "revoked", codes.PermissionDenied, "expired, revoked")
	refused("unknown token", "c1", "forged.jwt.token", codes.PermissionDenied, "refused the token")
	refused("service account not allowed", "c1", "other-sa", codes.PermissionDenied, "service account default:default of cluster c1 may not attest agents")
	refused("token bound to no pod", "c1", "unbound", codes.PermissionDenied, "not bound to a pod")
	refused("malformed claims", "c1", "bad-name", codes.PermissionDenied, "malformed")
	// Refused before any TokenReview (no amplification towards the
	// apiserver by unauthenticated callers).
	rev.mu.Lock()
	calls := rev.calls
	rev.mu.Unlock()
	refused("unknown cluster", "c2", "good", codes.FailedPrecondition, `cluster "c2" is not configured`)
	refused("empty token", "c1", "", codes.InvalidArgument, "projected service-account token")
	refused("oversized token", "c1", strings.Repeat("a", maxPSATToken+1), codes.InvalidArgument, "projected service-account token")
	rev.mu.Lock()
	if rev.calls != calls {
		t.Errorf("%d TokenReviews for requests refused before review", rev.calls-calls)
	}
	rev.mu.Unlock()
	rev.mu.Lock()
	rev.down = true
	rev.mu.Unlock()
	refused("apiserver down", "c1", "good", codes.Unavailable, "TokenReview of cluster c1 failed")
	rev.mu.Lock()
	rev.down = false
	rev.mu.Unlock()

	// Replay: the same pod's token again, while the first agent's SVID is
	// valid: refused, and the first agent keeps working.
	refused("replayed token (same pod)", "c1", "good", codes.PermissionDenied, "already attested agent")
	if n := len(h.auth.Events("agent.attest")); n < 10 {
		t.Errorf("%d agent.attest audit events after 1 attestation and 11 refusals", n)
	}
	if _, err := h.client(t, sv).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("the first agent after a refused replay: %v", err)
	}
	// A new agent pod on the node (the DaemonSet replaced it) attests the
	// node again and takes it over: the old SVID is refused from then on.
	sv2, err := h.attestPSAT(t, "c1", "new-pod")
	if err != nil || sv2.ID != sv.ID {
		t.Fatalf("new agent pod on the node: %v (%v)", err, sv2)
	}
	if _, err := h.client(t, sv2).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("sync with the new pod's agent: %v", err)
	}
	if _, err := h.client(t, sv).Sync(ctx, &wardv1.SyncRequest{}); status.Code(err) != codes.PermissionDenied && status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the replaced agent's SVID: %v, want refused", err)
	}
	// After its SVID expired (the agent was away), the same pod attests
	// again.
	h.clock.Advance(2 * time.Hour)
	sv3, err := h.attestPSAT(t, "c1", "new-pod")
	if err != nil {
		t.Fatalf("same pod after its agent SVID expired: %v", err)
	}
	// Evicted: the same pod may not come back, not even later.
	if _, _, err := h.reg.EvictAgent(ctx, sv3.ID, nil); err != nil {
		t.Fatal(err)
	}
	refused("evicted agent's pod", "c1", "new-pod", codes.PermissionDenied, "was evicted")
	h.clock.Advance(2 * time.Hour)
	refused("evicted agent's pod, later", "c1", "new-pod", codes.PermissionDenied, "was evicted")
	ag, _ = h.reg.GetAgent(ctx, sv3.ID)
	if !ag.Evicted || !slices.Contains(ag.Selectors, attest.Selector{Type: registry.AttestK8sPSAT, Value: "agent_pod_uid:7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d"}) {
		t.Fatalf("record after the refused re-attestations: %+v", ag)
	}
}

// TestK8sPSATReplayRace: two agents presenting the same pod's token at
// once; exactly one gets the node.
func TestK8sPSATReplayRace(t *testing.T) {
	rev := &fakeReview{tokens: map[string]fakeToken{
		"good": {aud: "ward:node.example.org", ns: "ward-system", sa: "ward-agent", pod: "p", podUID: "pod-uid-1", node: "node-a", nodeUID: "node-uid-1"},
	}}
	h := newHarnessWith(t, func(c *Config) {
		c.PSATClusters = map[string]PSATCluster{"c1": {Reviewer: rev, AllowedServiceAccounts: []string{"ward-system:ward-agent"}}}
	})
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() { _, err := h.attestPSAT(t, "c1", "good"); errs <- err }()
	}
	ok := 0
	for range n {
		if err := <-errs; err == nil {
			ok++
		} else if status.Code(err) != codes.PermissionDenied {
			t.Errorf("racing attestation: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent attestations with one pod's token succeeded, want 1", ok, n)
	}
}

func TestK8sPSATOff(t *testing.T) {
	h := newHarness(t)
	_, err := h.attestPSAT(t, "c1", "x")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "configure identity.k8s_psat") {
		t.Fatalf("PSAT on an authority without clusters: %v", err)
	}
}

// staticReview answers every TokenReview with st.
type staticReview struct{ st kubeapi.TokenReviewStatus }

func (s staticReview) ReviewToken(context.Context, string, []string) (kubeapi.TokenReviewStatus, error) {
	return s.st, nil
}

// FuzzVerifyPSAT: whatever an apiserver (or one in the middle of the
// authority's connection to it) answers, verifyPSAT never panics, and an
// accepted answer always gives an agent ID directly under this cluster's
// k8s_psat prefix, for an allowed service account, with the node UID as
// one path segment (no "/", ".", ".." tricks naming another node).
func FuzzVerifyPSAT(f *testing.F) {
	f.Add("system:serviceaccount:ward-system:ward-agent", "ward:node.example.org", "ward-agent-x", "1b2c", "node-1", "9f1e", true)
	f.Add("system:serviceaccount:ward-system:ward-agent", "ward:node.example.org", "p", "u", "n", "..", true)
	f.Add("system:serviceaccount:ward-system:ward-agent", "ward", "p", "u", "n", "x", true)
	f.Add("system:serviceaccount:ward-system:ward-agent:x", "ward:node.example.org", "p", "u", "n", "a/b", true)
	f.Add("system:serviceaccount:ward-system:ward-agent", "other", "p", "u", "n", "x", true)
	f.Fuzz(func(t *testing.T, user, aud, pod, podUID, node, nodeUID string, authed bool) {
		st := kubeapi.TokenReviewStatus{Authenticated: authed, Audiences: []string{aud}}
		st.User.Username = user
		st.User.Extra = map[string][]string{extraPodName: {pod}, extraPodUID: {podUID}, extraNodeName: {node}, extraNodeUID: {nodeUID}}
		s := &Server{td: testTD, cfg: Config{Log: slog.New(slog.DiscardHandler),
			PSATClusters: map[string]PSATCluster{"c1": {Reviewer: staticReview{st}, AllowedServiceAccounts: []string{"ward-system:ward-agent"}}}}}
		r, err := s.verifyPSAT(context.Background(), "c1", "token")
		if err != nil {
			return
		}
		if !authed || aud != DefaultPSATAudience(testTD) || user != "system:serviceaccount:ward-system:ward-agent" {
			t.Fatalf("accepted authenticated=%v audience %q user %q", authed, aud, user)
		}
		prefix := "spiffe://" + testTD.Name() + registry.AgentIDPrefix + registry.AttestK8sPSAT + "/c1/"
		rest, ok := strings.CutPrefix(r.id.String(), prefix)
		if !ok || rest != nodeUID || strings.Contains(rest, "/") || rest == "." || rest == ".." {
			t.Fatalf("agent ID %s for node UID %q", r.id, nodeUID)
		}
		if r.podUID != podUID {
			t.Fatalf("pod UID %q, want %q", r.podUID, podUID)
		}
	})
}

// TestK8sPSATAudiencePerTrustDomain: one Kubernetes cluster whose agents
// attest to two authorities (two trust domains). A token projected for
// the other trust domain's authority (audience ward:other.example.org),
// or for the old shared default audience ward, replayed to this one is
// refused: the default audience names this trust domain. An explicit
// audience in the config still works.
func TestK8sPSATAudiencePerTrustDomain(t *testing.T) {
	other := spiffeid.RequireTrustDomainFromString("other.example.org")
	if DefaultPSATAudience(testTD) == DefaultPSATAudience(other) || DefaultPSATAudience(testTD) != "ward:"+testTD.Name() {
		t.Fatalf("default audiences %q %q", DefaultPSATAudience(testTD), DefaultPSATAudience(other))
	}
	tok := func(aud, pod, uid string) fakeToken {
		return fakeToken{aud: aud, ns: "ward-system", sa: "ward-agent", pod: pod, podUID: uid, node: "node-" + pod, nodeUID: "n-" + uid}
	}
	rev := &fakeReview{tokens: map[string]fakeToken{
		"for-other-td": tok(DefaultPSATAudience(other), "a", "u1"),
		"shared-ward":  tok("ward", "b", "u2"),
		"for-this-td":  tok(DefaultPSATAudience(testTD), "c", "u3"),
	}}
	h := newHarnessWith(t, func(c *Config) {
		c.PSATClusters = map[string]PSATCluster{"c1": {Reviewer: rev, AllowedServiceAccounts: []string{"ward-system:ward-agent"}},
			"explicit": {Reviewer: rev, Audience: "ward", AllowedServiceAccounts: []string{"ward-system:ward-agent"}}}
	})
	for _, name := range []string{"for-other-td", "shared-ward"} {
		if _, err := h.attestPSAT(t, "c1", name); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), DefaultPSATAudience(testTD)) {
			t.Fatalf("token %s replayed to %s's authority: %v, want refused naming audience %s", name, testTD, err, DefaultPSATAudience(testTD))
		}
	}
	if _, err := h.attestPSAT(t, "c1", "for-this-td"); err != nil {
		t.Fatalf("a token for this trust domain's audience: %v", err)
	}
	if _, err := h.attestPSAT(t, "explicit", "shared-ward"); err != nil {
		t.Fatalf("an explicitly configured audience: %v", err)
	}
}
