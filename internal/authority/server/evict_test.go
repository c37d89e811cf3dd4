package server

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/policy"
)

// TestEvictRevokesIssuedSVIDs runs the attack of an evicted (compromised)
// node: the workload SVID its agent obtained before the eviction is
// refused by the Node API's workload KMS on its next connection (and on
// its open one), the agent's own SVID too; `ward agent evict` says how
// many it revoked and the deny-list carries them until their NotAfter.
// The agent attesting again with a new join token gets new SVIDs that
// work, while the old ones stay refused.
func TestEvictRevokesIssuedSVIDs(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "team-key", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	pol := `@id("domain-encrypts") permit(principal in TrustDomain::"` + testTD + `", action == Action::"kms:encrypt", resource == Key::"team-key");`
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(pol)}}); err != nil {
		t.Fatal(err)
	}
	agent := e.joinAgent(t, "node-evict")
	other := e.joinAgent(t, "node-other")
	sign := func(agentSVID *x509svid.SVID, parent, path string) *x509svid.SVID {
		t.Helper()
		en, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
			SpiffeId: "spiffe://" + testTD + path, ParentId: parent, Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1"}}}})
		if err != nil {
			t.Fatal(err)
		}
		csr, key := newCSR(t)
		res, err := e.nodeClient(t, agentSVID).SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: en.Id, Csr: csr}}})
		if err != nil || res.Results[0].Error != nil {
			t.Fatalf("signing %s: %v %v", path, err, res.GetResults())
		}
		return toSVID(t, res.Results[0].Chain, key)
	}
	w := sign(agent, agent.ID.String(), "/evicted-app")
	bystander := sign(other, other.ID.String(), "/bystander")
	encrypt := func(svid *x509svid.SVID) error {
		_, err := e.workloadKMS(t, svid).Encrypt(ctx, &wardv1.EncryptRequest{Key: "team-key", Plaintext: []byte("x")})
		return err
	}
	until := func(svid *x509svid.SVID, want codes.Code, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := encrypt(svid)
			if code(err) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: want %v, last error %v", what, want, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	until(w, codes.OK, "workload of the agent before eviction")
	open := e.workloadKMS(t, w) // a connection opened before the eviction
	if _, err := open.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team-key", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}

	ev, err := e.agents.EvictAgent(ctx, &wardv1.EvictAgentRequest{SpiffeId: agent.ID.String()})
	if err != nil {
		t.Fatal(err)
	}
	// The workload's SVID and the agent's own.
	if ev.RevokedSvids != 2 {
		t.Fatalf("eviction revoked %d SVIDs, want 2 (the workload's and the agent's)", ev.RevokedSvids)
	}
	until(w, codes.PermissionDenied, "evicted agent's workload, new connection")
	if _, err := open.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team-key", Plaintext: []byte("x")}); code(err) != codes.PermissionDenied {
		t.Fatalf("evicted agent's workload on its open connection: %v", err)
	}
	until(bystander, codes.OK, "another agent's workload")

	pv, err := admin.Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var b policy.Bundle
	if b, err = policy.ParseBundle(pv.BundleJson); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*x509svid.SVID{w, agent} {
		sr := policy.SerialHex(c.Certificates[0].SerialNumber)
		if !slices.Contains(b.DenyList.Serials, sr) {
			t.Fatalf("serial %s of %s not on the deny-list: %v", sr, c.ID, b.DenyList)
		}
	}
	var audited bool
	for _, a := range e.auditEvents(t) {
		audited = audited || a.Operation == "agent.evict" && a.Result == "ok" && a.Fields["revoked_svids"] == "2"
	}
	if !audited {
		t.Fatal("agent.evict is not audited with the count of revoked SVIDs")
	}

	// Attesting again (new join token, same path): new SVIDs work, the old
	// ones stay refused.
	back := e.joinAgent(t, "node-evict")
	if _, err := e.nodeClient(t, back).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("re-attested agent: %v", err)
	}
	fresh := sign(back, back.ID.String(), "/evicted-app-again")
	until(fresh, codes.OK, "new SVID after re-attestation")
	until(w, codes.PermissionDenied, "old SVID after re-attestation")
	if _, err := e.nodeClient(t, agent).Sync(ctx, &wardv1.SyncRequest{}); code(err) != codes.PermissionDenied {
		t.Fatalf("the evicted agent's own old SVID: %v", err)
	}
	if !strings.Contains(pol, "kms:encrypt") {
		t.Fatal("unreachable")
	}
}
