package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/policy"
)

func policyVersion(t *testing.T, n uint64, d policy.DenyList, remote map[string]policy.DenyList) *wardv1.PolicyVersion {
	t.Helper()
	b, err := policy.MarshalBundle(policy.Bundle{Version: n, Files: map[string][]byte{"p.cedar": []byte(`@id("p") permit(principal, action, resource);`)},
		DenyList: d, RemoteDenyLists: remote})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return &wardv1.PolicyVersion{Version: n, BundleJson: b, Digest: hex.EncodeToString(sum[:])}
}

// TestJWTRevokedFollowsTheDenyList: the agent's ValidateJWTSVID check
// (JWTRevoked) reads the latest policy version's deny-list, own and
// federated, also with policy_socket: none (no proxies to serve, the
// deny-list still followed, from the cache at start), and an older
// version never replaces a newer one.
func TestJWTRevokedFollowsTheDenyList(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cfg.JoinToken = auth.joinToken()
	cfg.PolicySocket = "none"
	a, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	own, peer, later := strings.Repeat("a1", 16), strings.Repeat("b2", 16), strings.Repeat("c3", 16)
	peerTD := spiffeid.RequireTrustDomainFromString("peer.example")
	if err := a.savePolicy(policyVersion(t, 5, policy.DenyList{Serials: []string{own}},
		map[string]policy.DenyList{peerTD.Name(): {Serials: []string{peer}}})); err != nil {
		t.Fatal(err)
	}
	if a.JWTRevoked(testTD, own) {
		t.Fatal("revoked before any policy version")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for !a.JWTRevoked(testTD, own) {
		if time.Now().After(deadline) {
			t.Fatal("the cached version's deny-list is not followed with policy_socket: none")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !a.JWTRevoked(peerTD, peer) || a.JWTRevoked(testTD, peer) || a.JWTRevoked(testTD, later) {
		t.Fatal("remote deny-list not scoped to its trust domain")
	}
	a.setPolicy(policyVersion(t, 6, policy.DenyList{Serials: []string{own, later}}, nil), nil)
	if !a.JWTRevoked(testTD, later) {
		t.Fatal("a newer version not taken")
	}
	a.setPolicy(policyVersion(t, 4, policy.DenyList{}, nil), nil)
	if !a.JWTRevoked(testTD, later) {
		t.Fatal("an older version replaced a newer one")
	}
}
