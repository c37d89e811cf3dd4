package nodeapi

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
)

// TestLostRenewalResponseRetry runs the flow that locked a join-token agent
// out: the server records the renewal, but the agent never gets the new
// SVID (the response is lost, or the audit log is down and it is
// withheld), so it retries RenewAgent with its old SVID. Before, the retry
// was PermissionDenied (only the current serial may renew), which the agent
// takes for eviction. Now the retry succeeds while the new serial has never
// been presented, the retried SVID works, and once it has been used the old
// SVID can no longer renew.
func TestLostRenewalResponseRetry(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	old, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	oldClient := h.client(t, old)

	// The audit log is down after the renewal is recorded: the SVID is
	// withheld with a retryable code.
	h.auditDown.Store(true)
	der, _ := csr(t)
	_, err = oldClient.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
	h.auditDown.Store(false)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "retry RenewAgent") {
		t.Fatalf("RenewAgent with the audit log down: %v; want Unavailable (retry)", err)
	}

	// The response is lost: the call succeeded, the agent never saw it.
	der, _ = csr(t)
	if _, err := oldClient.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der}); err != nil {
		t.Fatal(err)
	}

	// The agent retries with its old SVID.
	der, key := csr(t)
	r, err := oldClient.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
	if err != nil {
		t.Fatalf("retrying RenewAgent with the old SVID after a lost response: %v; want a new SVID", err)
	}
	cur := svidOf(t, r.Chain, key)
	if _, err := h.client(t, cur).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("the retried renewal's SVID, Sync: %v", err)
	}

	// The new SVID is in use: the old one may not renew any more.
	der, _ = csr(t)
	_, err = oldClient.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "only the current agent SVID may renew") {
		t.Fatalf("old SVID renewing after the new one was used: %v; want PermissionDenied", err)
	}
	der, _ = csr(t)
	if _, err := h.client(t, cur).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der}); err != nil {
		t.Fatalf("the current SVID's renewal: %v", err)
	}
}

// TestRenewRetriesThroughAuditOutage: an agent retrying RenewAgent while
// the audit log is down gets every renewal withheld; those SVIDs were
// never released, so they must not use up its bound of recorded SVIDs
// (registry.MaxIssuedPerEntry). Before, after 8 withheld retries every
// renewal (and attestation) was refused FailedPrecondition until the
// withheld ones expired, a whole SVID lifetime after the log was back.
func TestRenewRetriesThroughAuditOutage(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	old, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	c := h.client(t, old)
	h.auditDown.Store(true)
	for i := range 3 * registry.MaxIssuedPerEntry {
		der, _ := csr(t)
		if _, err := c.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der}); status.Code(err) != codes.Unavailable {
			t.Fatalf("retry %d with the audit log down: %v; want Unavailable", i, err)
		}
	}
	h.auditDown.Store(false)
	der, _ := csr(t)
	if _, err := c.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der}); err != nil {
		t.Fatalf("renewal once the audit log is back: %v", err)
	}
}
