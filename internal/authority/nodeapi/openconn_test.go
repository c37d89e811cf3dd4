package nodeapi

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// TestOpenConnectionLosesAccessAtNextCall runs the attacks on what the
// Node API derives once per connection (connInfo: the peer chain, its
// sum, the leaf serial): a caller keeps its connection open while it is
// revoked, evicted or its CA key tainted, and its very next call on that
// same connection is refused.
func TestOpenConnectionLosesAccessAtNextCall(t *testing.T) {
	ctx := context.Background()

	t.Run("workload SVID serial revoked", func(t *testing.T) {
		k := newKMSHarness(t)
		if _, err := k.kms.Create(ctx, "team/data", "internal", ""); err != nil {
			t.Fatal(err)
		}
		k.apply(t, `permit(principal == Workload::"spiffe://`+testTD.Name()+`/app", action == Action::"kms:encrypt", resource);`)
		svid := k.caSigned(t, "/app")
		c := k.workloadKMS(t, svid) // one connection for every call below
		encrypt := func() error {
			_, err := c.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
			return err
		}
		waitCode(t, encrypt, codes.OK)
		if _, err := k.policy.Revoke(ctx, "admin:uid=0", nil, []string{svid.Certificates[0].SerialNumber.Text(16)}, false, ""); err != nil {
			t.Fatal(err)
		}
		if err := waitCode(t, encrypt, codes.PermissionDenied); !strings.Contains(err.Error(), "deny-list") {
			t.Fatalf("revoked serial on its open connection: %v", err)
		}
	})

	t.Run("agent evicted", func(t *testing.T) {
		h := newHarness(t)
		agent, err := h.attest(t, h.token(t))
		if err != nil {
			t.Fatal(err)
		}
		node := h.client(t, agent)
		sync := func() error { _, err := node.Sync(ctx, &wardv1.SyncRequest{}); return err }
		waitCode(t, sync, codes.OK)
		if _, _, err := h.reg.EvictAgent(ctx, agent.ID, nil); err != nil {
			t.Fatal(err)
		}
		if err := sync(); code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "evicted") {
			t.Fatalf("evicted agent on its open connection: %v", err)
		}
	})

	t.Run("workload CA key tainted", func(t *testing.T) {
		k := newKMSHarness(t)
		if _, err := k.kms.Create(ctx, "team/data", "internal", ""); err != nil {
			t.Fatal(err)
		}
		k.apply(t, `permit(principal == Workload::"spiffe://`+testTD.Name()+`/app", action == Action::"kms:encrypt", resource);`)
		svid := k.caSigned(t, "/app")
		c := k.workloadKMS(t, svid)
		encrypt := func() error {
			_, err := c.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
			return err
		}
		waitCode(t, encrypt, codes.OK)
		kid := issuerKeyID(t, svid)
		if err := k.ca.Taint(ctx, kid); err != nil {
			t.Fatal(err)
		}
		if err := encrypt(); code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "tainted") {
			t.Fatalf("tainted chain on its open connection: %v", err)
		}
	})
}

// waitCode calls f until it returns code (policy versions arrive
// asynchronously), at most 5 s; it fails the test otherwise.
func waitCode(t *testing.T, f func() error, want codes.Code) error {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	err := f()
	for code(err) != want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		err = f()
	}
	if code(err) != want {
		t.Fatalf("got %v, want %v", err, want)
	}
	return err
}

func issuerKeyID(t *testing.T, s *x509svid.SVID) string {
	t.Helper()
	if len(s.Certificates) < 2 {
		t.Fatal("the SVID carries no intermediate")
	}
	kid, err := keyutil.CAKeyID(s.Certificates[1].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}
