package server

// The tests here hold the server's wiring of the Node API: the labels of
// registry entries reach the policy engine of the workload KMS, and the
// audit log agents get with Sync is the one the admin API shows. The Node
// API's own behaviour is tested in nodeapi.

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
func (e *idEnv) workloadSVID(t testing.TB, path string) *x509svid.SVID {
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

func (e *idEnv) workloadKMS(t testing.TB, svid *x509svid.SVID) wardv1.KMSClient {
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
