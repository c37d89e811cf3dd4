package adminapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestSealedAnswersFailedPrecondition: every service reaches the
// authority through the Unsealed accessor, so while it is sealed each one
// answers with the accessor's FailedPrecondition, and unsealing brings
// them back.
func TestSealedAnswersFailedPrecondition(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	op := wardv1.NewOperatorClient(e.conn)
	st, err := op.Seal(ctx, &wardv1.SealRequest{})
	if err != nil || !st.Sealed {
		t.Fatalf("seal: %v %v", st, err)
	}
	calls := map[string]error{}
	_, calls["Keys.ListKeys"] = wardv1.NewKeysClient(e.conn).ListKeys(ctx, &wardv1.ListKeysRequest{})
	_, calls["KMS.Encrypt"] = wardv1.NewKMSClient(e.conn).Encrypt(ctx, &wardv1.EncryptRequest{Key: "k"})
	_, calls["Audit.Checkpoint"] = wardv1.NewAuditClient(e.conn).Checkpoint(ctx, &wardv1.CheckpointRequest{})
	_, calls["Policy.ListPolicyVersions"] = e.policy.ListPolicyVersions(ctx, &wardv1.ListPolicyVersionsRequest{})
	_, calls["Entries.ListEntries"] = e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	_, calls["Agents.ListAgents"] = e.agents.ListAgents(ctx, &wardv1.ListAgentsRequest{})
	_, calls["CA.ShowCA"] = e.ca.ShowCA(ctx, &wardv1.ShowCARequest{})
	ss, err := wardv1.NewPolicyDistributionClient(e.conn).WatchPolicy(ctx, &wardv1.WatchPolicyRequest{})
	if err == nil {
		_, err = ss.Recv()
	}
	calls["PolicyDistribution.WatchPolicy"] = err
	for name, err := range calls {
		if code(err) != codes.FailedPrecondition {
			t.Errorf("%s while sealed: got %v, want FailedPrecondition", name, err)
		}
	}
	if _, err := op.Unseal(ctx, &wardv1.UnsealRequest{Share: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{}); err != nil {
		t.Fatalf("after unseal: %v", err)
	}
}
