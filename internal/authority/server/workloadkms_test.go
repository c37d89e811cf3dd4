package server

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// workloadSVID registers an entry under a fresh agent and has the agent
// sign an X509-SVID for it, as the node agent would.
func (e *idEnv) workloadSVID(t *testing.T, path string) *x509svid.SVID {
	t.Helper()
	agent := e.joinAgent(t, "node-"+strings.TrimPrefix(path, "/"))
	en, err := e.entries.CreateEntry(context.Background(), &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
		SpiffeId: "spiffe://" + testTD + path, ParentId: agent.ID.String(), Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	csr, key := newCSR(t)
	res, err := e.nodeClient(t, agent).SignX509SVIDs(context.Background(), &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: en.Id, Csr: csr}}})
	if err != nil || res.Results[0].Error != nil {
		t.Fatalf("signing %s: %v %v", path, err, res.GetResults())
	}
	return toSVID(t, res.Results[0].Chain, key)
}

func (e *idEnv) workloadKMS(t *testing.T, svid *x509svid.SVID) wardv1.KMSClient {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(svid, e.bundle, tlsconfig.AuthorizeID(serverID()))
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(e.srv.NodeAPIAddress(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return wardv1.NewKMSClient(conn)
}

func TestWorkloadKMSIsAuthorizedByPolicy(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "payments/cards", Classification: "restricted"}); err != nil {
		t.Fatal(err)
	}
	payments := e.workloadKMS(t, e.workloadSVID(t, "/payments"))
	batch := e.workloadKMS(t, e.workloadSVID(t, "/batch"))

	// No policy yet: fail closed.
	_, err = payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("4111")})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no-policy") {
		t.Fatalf("without policy: %v", err)
	}
	pol := `@id("payments-uses-its-key")
permit(principal == Workload::"spiffe://` + testTD + `/payments", action in Action::"kms:*", resource == Key::"payments/cards");
@id("restricted-needs-payments")
forbid(principal, action == Action::"kms:decrypt", resource) when { resource.classification == "restricted" } unless { principal == Workload::"spiffe://` + testTD + `/payments" };`
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"kms.cedar": []byte(pol)}}); err != nil {
		t.Fatal(err)
	}
	// The engine follows the store's watch: bounded wait for the version.
	var ct *wardv1.EncryptResponse
	deadline := time.Now().Add(5 * time.Second)
	for {
		ct, err = payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("4111")})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("allowed workload: %v", err)
	}
	pt, err := payments.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct.Ciphertext})
	if err != nil || string(pt.Plaintext) != "4111" {
		t.Fatalf("decrypt: %v", err)
	}
	_, err = batch.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct.Ciphertext})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "restricted-needs-payments") {
		t.Fatalf("other workload decrypting: %v", err)
	}
	_, err = batch.BatchDecrypt(ctx, &wardv1.BatchDecryptRequest{Items: []*wardv1.DecryptItem{{Ciphertext: ct.Ciphertext}}})
	if code(err) != codes.PermissionDenied {
		t.Fatalf("other workload batch decrypting: %v", err)
	}
	_, err = batch.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: "payments/cards"})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "default-deny") {
		t.Fatalf("other workload datakey: %v", err)
	}
	// Revocation applies on the next call.
	if _, err := admin.Policy.Revoke(ctx, &wardv1.RevokeRequest{SpiffeIds: []string{"spiffe://" + testTD + "/payments"}}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err = payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("x")})
		if code(err) == codes.PermissionDenied || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "deny-list") {
		t.Fatalf("revoked workload: %v", err)
	}
	// Denials are audited with the caller's SPIFFE ID.
	denied := 0
	for _, ev := range e.auditEvents(t) {
		if ev.Result == "denied" && strings.HasPrefix(ev.Operation, "kms.") && strings.HasPrefix(ev.Actor, "spiffe://") {
			denied++
		}
	}
	if denied < 4 {
		t.Fatalf("only %d denied KMS calls audited", denied)
	}
	// Without a client certificate the KMS is not reachable at all.
	tc := tlsconfig.TLSClientConfig(e.bundle, tlsconfig.AuthorizeID(serverID()))
	conn, _ := grpc.NewClient(e.srv.NodeAPIAddress(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	defer conn.Close()
	_, err = wardv1.NewKMSClient(conn).Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards"})
	if code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous KMS call: %v", err)
	}
}

// TestPrincipalLabelsReachPolicy: labels of registration entries travel in
// every policy version, and changing an entry's labels publishes a new
// version that enforcement points (here the workload KMS) follow.
func TestPrincipalLabelsReachPolicy(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "team-key", Classification: "internal"})
	agent := e.joinAgent(t, "node-labels")
	en, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
		SpiffeId: "spiffe://" + testTD + "/svc", ParentId: agent.ID.String(),
		Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:7"}}, Labels: map[string]string{"team": "payments"}}})
	if err != nil {
		t.Fatal(err)
	}
	csr, key := newCSR(t)
	res, err := e.nodeClient(t, agent).SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: en.Id, Csr: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	kms := e.workloadKMS(t, toSVID(t, res.Results[0].Chain, key))
	pol := `@id("team-payments") permit(principal, action == Action::"kms:encrypt", resource == Key::"team-key") when { principal has labels && principal.labels has team && principal.labels.team == "payments" };`
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(pol)}}); err != nil {
		t.Fatal(err)
	}
	until := func(want codes.Code) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := kms.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team-key", Plaintext: []byte("x")})
			if code(err) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("want %v, last error %v", want, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	until(codes.OK)
	en.Labels = map[string]string{"team": "batch"}
	if _, err := e.entries.UpdateEntry(ctx, &wardv1.UpdateEntryRequest{Entry: en}); err != nil {
		t.Fatal(err)
	}
	until(codes.PermissionDenied)
	pv, err := admin.Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{})
	if err != nil || pv.Version != 2 || !strings.Contains(string(pv.BundleJson), `"team":"batch"`) {
		t.Fatalf("current version after the label change: %v %v", pv.GetVersion(), err)
	}
}

// TestWorkloadKMSRefusesAgentSVIDs runs the red team's attack end to end:
// with a policy that permits kms:encrypt to every principal of the trust
// domain, an evicted agent's SVID, an agent SVID superseded by renewal and
// even a current agent's SVID are refused by the workload KMS (the /ward/
// namespace holds no workloads), while a workload's SVID is served.
func TestWorkloadKMSRefusesAgentSVIDs(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "team/data", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	pol := `@id("whole-domain-encrypts")
permit(principal in TrustDomain::"` + testTD + `", action == Action::"kms:encrypt", resource);`
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"kms.cedar": []byte(pol)}}); err != nil {
		t.Fatal(err)
	}
	workload := e.workloadKMS(t, e.workloadSVID(t, "/app"))
	encrypt := func(k wardv1.KMSClient) error {
		_, err := k.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
		return err
	}
	// The engine follows the store's watch: bounded wait for the version.
	deadline := time.Now().Add(5 * time.Second)
	for err = encrypt(workload); err != nil && time.Now().Before(deadline); err = encrypt(workload) {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("workload under a permitting policy: %v", err)
	}

	current := e.joinAgent(t, "current")
	evicted := e.joinAgent(t, "evicted")
	if _, err := e.agents.EvictAgent(ctx, &wardv1.EvictAgentRequest{SpiffeId: evicted.ID.String()}); err != nil {
		t.Fatal(err)
	}
	first := e.joinAgent(t, "renewed")
	svid := first
	for range 2 {
		der, key := newCSR(t)
		r, err := e.nodeClient(t, svid).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
		if err != nil {
			t.Fatal(err)
		}
		svid = toSVID(t, r.Chain, key)
	}
	for _, tc := range []struct {
		name string
		svid *x509svid.SVID
		msg  string
	}{
		{"evicted agent", evicted, "evicted"},
		{"superseded agent SVID", first, "no longer its current one"},
		{"current agent", current, "not a workload identity"},
	} {
		err := encrypt(e.workloadKMS(t, tc.svid))
		if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s (%s) calling kms:encrypt: %v; want PermissionDenied %q", tc.name, tc.svid.ID, err, tc.msg)
		}
	}
}

// TestSyncAuditCheckpointIsTheAuthoritys: the checkpoint agents get with
// Sync is the authority's audit head, signed by the key `ward audit
// checkpoint` shows, and the proof from an earlier size verifies.
func TestSyncAuditCheckpointIsTheAuthoritys(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	agent := e.joinAgent(t, "witness")
	node := e.nodeClient(t, agent)
	first, err := node.Sync(ctx, &wardv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cp1, err := checkpoint.Parse(first.AuditCheckpoint)
	if err != nil {
		t.Fatalf("Sync audit checkpoint: %v", err)
	}
	cli, err := admin.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if string(cli.PublicKeyPem) != string(first.AuditPublicKeyPem) {
		t.Fatal("Sync and `ward audit checkpoint` name different audit keys")
	}
	pub, _ := checkpoint.ParsePublicKeyPEM(cli.PublicKeyPem)
	if err := checkpoint.Verify(cp1, pub); err != nil {
		t.Fatal(err)
	}
	e.joinAgent(t, "another") // more audited events
	next, err := node.Sync(ctx, &wardv1.SyncRequest{AuditTreeSize: cp1.Size})
	if err != nil {
		t.Fatal(err)
	}
	cp2, _ := checkpoint.Parse(next.AuditCheckpoint)
	if cp2.Size <= cp1.Size {
		t.Fatalf("log did not grow: %d -> %d", cp1.Size, cp2.Size)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cp1.Size, cp2.Size, next.AuditConsistencyProof, cp1.RootHash, cp2.RootHash); err != nil {
		t.Fatal(err)
	}
}
