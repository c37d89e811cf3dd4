package nodeapi

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/kubeapi"
)

// PSATCluster is one Kubernetes cluster whose agents attest with projected
// service-account tokens (k8s_psat).
type PSATCluster struct {
	// Reviewer validates tokens: the cluster's TokenReview API.
	Reviewer TokenReviewer
	// Audience the token must be issued for (default DefaultPSATAudience
	// of the trust domain: "ward:<trust domain>").
	Audience string
	// AllowedServiceAccounts are "namespace:name" of the service accounts
	// agents run as; a token of any other one is refused.
	AllowedServiceAccounts []string
}

// TokenReviewer is the TokenReview API of a cluster (kubeapi.Client).
type TokenReviewer interface {
	ReviewToken(ctx context.Context, token string, audiences []string) (kubeapi.TokenReviewStatus, error)
}

// The TokenReview user extras a pod-bound projected token carries.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraNodeUID  = "authentication.kubernetes.io/node-uid"
)

const (
	maxPSATToken  = 16 << 10
	reviewTimeout = 10 * time.Second
)

// DefaultPSATAudience is the audience an agent's projected token must be
// issued for when identity.k8s_psat names none: "ward:<trust domain>",
// so a token projected for one trust domain's authority is refused by
// another's (a cluster's agents may attest to several authorities, and
// the apiserver checks the audience, not the authority it is shown to).
func DefaultPSATAudience(td spiffeid.TrustDomain) string { return "ward:" + td.Name() }

// PSATAgentID is the agent ID a k8s_psat node gets:
// spiffe://TD/ward/agent/k8s_psat/<cluster>/<node UID>.
func PSATAgentID(td spiffeid.TrustDomain, cluster, nodeUID string) (spiffeid.ID, error) {
	return spiffeid.FromPath(td, registry.AgentIDPrefix+registry.AttestK8sPSAT+"/"+cluster+"/"+nodeUID)
}

// psatResult is a validated token: the agent ID and the node's selectors.
type psatResult struct {
	id     spiffeid.ID
	podUID string
	sels   []attest.Selector
}

// verifyPSAT validates a projected service-account token of cluster
// through its TokenReview API and derives the agent's ID and selectors.
// Every refusal is PermissionDenied (or FailedPrecondition for a cluster
// this authority does not know), except an unreachable apiserver
// (Unavailable).
func (s *Server) verifyPSAT(ctx context.Context, cluster, token string) (psatResult, error) {
	cl, ok := s.cfg.PSATClusters[cluster]
	if !ok {
		if len(s.cfg.PSATClusters) == 0 {
			return psatResult{}, status.Error(codes.FailedPrecondition, "k8s_psat attestation is not enabled on this authority: configure identity.k8s_psat")
		}
		return psatResult{}, status.Errorf(codes.FailedPrecondition, "k8s_psat: cluster %q is not configured on this authority (identity.k8s_psat names the clusters)", printable(cluster))
	}
	if token == "" || len(token) > maxPSATToken {
		return psatResult{}, status.Errorf(codes.InvalidArgument, "k8s_psat: send the projected service-account token (1-%d bytes)", maxPSATToken)
	}
	aud := cl.Audience
	if aud == "" {
		aud = DefaultPSATAudience(s.td)
	}
	rctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	st, err := cl.Reviewer.ReviewToken(rctx, token, []string{aud})
	if err != nil {
		s.cfg.Log.Warn("k8s_psat: TokenReview failed", "cluster", cluster, "err", err)
		return psatResult{}, status.Errorf(codes.Unavailable, "k8s_psat: the TokenReview of cluster %s failed: %v; retry later", cluster, err)
	}
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: cluster %s refused the token (%s): it is expired, revoked (its pod is gone), not for audience %q, or not a service-account token", cluster, printable(why), aud)
	}
	if !slices.Contains(st.Audiences, aud) {
		return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: the token is not valid for audience %q (TokenReview gave %q): project the token with audience %q", aud, st.Audiences, aud)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: the token belongs to %q, not a service account", printable(st.User.Username))
	}
	if !slices.Contains(cl.AllowedServiceAccounts, ns+":"+sa) {
		return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: service account %s:%s of cluster %s may not attest agents (identity.k8s_psat allowed_service_accounts)", ns, sa, cluster)
	}
	one := func(key string) string {
		if v := st.User.Extra[key]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	podName, podUID, nodeName, nodeUID := one(extraPodName), one(extraPodUID), one(extraNodeName), one(extraNodeUID)
	if podName == "" || podUID == "" || nodeName == "" || nodeUID == "" {
		return psatResult{}, status.Error(codes.PermissionDenied, "k8s_psat: the token is not bound to a pod on a node (no pod and node in its claims): "+
			"give the agent a projected serviceAccountToken volume, not a token from `kubectl create token`")
	}
	for _, v := range []string{ns, sa, podName, podUID, nodeName, nodeUID} {
		if !k8sName(v) {
			return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: the token's claims hold a malformed name %q", printable(v))
		}
	}
	id, err := PSATAgentID(s.td, cluster, nodeUID)
	if err != nil {
		return psatResult{}, status.Errorf(codes.PermissionDenied, "k8s_psat: node UID %q makes no agent ID: %v", nodeUID, err)
	}
	sel := func(k, v string) attest.Selector {
		return attest.Selector{Type: registry.AttestK8sPSAT, Value: k + ":" + v}
	}
	return psatResult{id: id, podUID: podUID, sels: attest.Normalize([]attest.Selector{
		sel("cluster", cluster), sel("agent_ns", ns), sel("agent_sa", sa),
		sel("agent_pod_name", podName), sel("agent_pod_uid", podUID),
		sel("agent_node_name", nodeName), sel("agent_node_uid", nodeUID),
	})}, nil
}

// psatReuse is the rule for a second attestation of the same node: a pod
// attests its node once. Its token (which the kubelet refreshes, valid
// about an hour) is refused while the agent it attested holds an
// unexpired SVID (the agent renews with that SVID and never needs the
// token again; another process presenting it is a replay), and after that
// agent was evicted (eviction sticks until the agent pod is replaced).
// A new pod (the DaemonSet replaced it; the old pod's tokens died with it)
// attests the node again and replaces the record.
func psatReuse(podUID string, now time.Time) func(prev registry.Agent, exists bool) error {
	return func(prev registry.Agent, exists bool) error {
		if !exists || prev.AttestationType != registry.AttestK8sPSAT {
			return nil
		}
		if !slices.Contains(prev.Selectors, attest.Selector{Type: registry.AttestK8sPSAT, Value: "agent_pod_uid:" + podUID}) {
			return nil
		}
		if prev.Evicted {
			return status.Errorf(codes.PermissionDenied, "k8s_psat: agent %s was evicted and pod %s may not attest it again: delete the agent pod so its DaemonSet makes a new one", prev.SPIFFEID, podUID)
		}
		if prev.Expires.After(now) {
			return status.Errorf(codes.PermissionDenied, "k8s_psat: pod %s already attested agent %s, whose SVID is valid until %s: a pod's token attests once (a second use is a replay); "+
				"the agent renews with its SVID. If it lost its data directory, delete the agent pod or wait until then",
				podUID, prev.SPIFFEID, prev.Expires.UTC().Format(time.RFC3339))
		}
		return nil
	}
}

// k8sName accepts the names and UIDs Kubernetes gives objects: DNS
// subdomains and UUIDs, at most 253 bytes.
func k8sName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// printable quotes what a caller sent for an error message, bounded.
func printable(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
