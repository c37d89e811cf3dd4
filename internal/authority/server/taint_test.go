package server

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

func currentBundle(t *testing.T, admin *client.Client) policy.Bundle {
	t.Helper()
	pv, err := admin.Policy.GetPolicy(context.Background(), &wardv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.ParseBundle(pv.BundleJson)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// `ward ca taint` puts the key on the deny-list that proxies enforce, in
// the same call; the workload KMS (Node API) refuses the chain too; a
// taint made before any policy reaches the first policy applied.
func TestTaintCAKeyPublishesToDenyList(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	// Before any policy: the taint is recorded in the CA and the first
	// policy version carries it.
	first := authoritytest.ActiveIntermediate(t, e.ca)
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: first}); err != nil {
		t.Fatalf("taint with no policy applied: %v", err)
	}
	pol := `@id("all") permit(principal, action, resource);`
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(pol)}}); err != nil {
		t.Fatal(err)
	}
	if b := currentBundle(t, admin); !slices.Contains(b.DenyList.TaintedKeys, first) {
		t.Fatalf("first policy version lacks the key tainted before it: %+v", b.DenyList)
	}

	// A workload with an SVID from the now-active intermediate.
	second := authoritytest.ActiveIntermediate(t, e.ca)
	svid := e.workloadSVID(t, "/payments")
	if _, err := admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "payments/cards", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	kms := e.workloadKMS(t, svid)
	if _, err := kms.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("precondition, workload KMS before the taint: %v", err)
	}
	before := currentBundle(t, admin).Version
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: second}); err != nil {
		t.Fatal(err)
	}
	b := currentBundle(t, admin)
	if b.Version <= before || !slices.Contains(b.DenyList.TaintedKeys, second) || !slices.Contains(b.DenyList.TaintedKeys, first) {
		t.Fatalf("taint did not make a policy version listing both keys: version %d (was %d) %+v", b.Version, before, b.DenyList)
	}
	// What every proxy compiles from that version denies the old chain.
	set, err := policy.CompileBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	req := policy.Request{Principal: svid.ID.String(), Action: policy.ActionConnect,
		Resource: policy.Resource{Type: policy.TypeService, Name: "api", Port: 443}, ChainKeyIDs: []string{second}}
	if d := set.Decide(req); d.Allowed || d.Cause != policy.CauseTaintedKey {
		t.Fatalf("published version allows a chain through the tainted key: %+v", d)
	}
	// The workload KMS refuses the old chain as well.
	_, err = kms.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("x")})
	if code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), second) {
		t.Fatalf("workload KMS with a chain through the tainted key: %v", err)
	}
	ops := map[string]int{}
	for _, ev := range e.auditEvents(t) {
		ops[ev.Operation+"/"+ev.Result]++
	}
	if ops["policy.taint/ok"] == 0 || ops["ca.taint/ok"] < 2 {
		t.Errorf("audit log lacks the taint's events: %v", ops)
	}
}
