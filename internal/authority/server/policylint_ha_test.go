package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

const fencedPermit = `@id("fenced")
permit (principal in TrustDomain::"test.example.org", action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`

// TestStrictFederationLintIsClusterWide: policy.federation_lint is per
// replica, but strict is a property of the policy store. Two authorities
// over one etcd, A configured warn and B strict: once B unsealed (it
// records strict in the store, audited), a set the lint refuses is
// refused through BOTH, by apply, rollback and CheckPolicy (so ward
// apply's pre-check and its store agree whichever replica each reaches);
// a restart of A keeps it; lowering it takes the explicit, audited admin
// action, and B keeps refusing on its own config and raises it again at
// its next unseal.
func TestStrictFederationLintIsClusterWide(t *testing.T) {
	etcd := etcdtest.Start(t)
	root := t.TempDir()
	ctx := context.Background()
	startOne := func(name, lint string) (*Server, *client.Client) {
		t.Helper()
		c := baseConfig(filepath.Join(root, name))
		c.Policy.FederationLint = lint
		c.Storage.Backend = "etcd"
		c.Storage.Etcd = config.Etcd{Endpoints: etcd.Endpoints(), Prefix: "/ward/lint/", DialTimeout: yamlconf.Duration(5 * time.Second),
			LeaseTTL: yamlconf.Duration(2 * time.Second), MemberName: name}
		return start(t, c)
	}
	open := map[string][]byte{"p.cedar": []byte(openPermit)}
	fenced := map[string][]byte{"p.cedar": []byte(fencedPermit)}
	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `(policy "by-path")`) {
			t.Fatalf("%s: want the strict lint's refusal, got %v", what, err)
		}
	}
	lintEvents := func(srv *Server) []audit.Event {
		var out []audit.Event
		for _, ev := range allEvents(t, srv) {
			if ev.Operation == "policy.federation_lint" && ev.Result == audit.ResultOK {
				out = append(out, ev)
			}
		}
		return out
	}

	srvA, a := startOne("a", config.FederationLintWarn)
	if _, err := a.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	v1, err := a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open})
	if err != nil {
		t.Fatalf("warn cluster refused a warned set: %v", err)
	}
	if _, err := a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: fenced}); err != nil {
		t.Fatal(err)
	}
	if m, err := a.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{}); err != nil || m.Mode != "warn" || m.LocalStrict {
		t.Fatalf("mode before any strict authority: %v %v", m, err)
	}

	srvB, b := startOne("b", config.FederationLintStrict)
	if srvB.Sealed() {
		t.Fatal("B did not unseal at start")
	}
	m, err := a.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{})
	if err != nil || m.Mode != "strict" || m.Actor != "authority b" {
		t.Fatalf("B's unseal did not record strict in the store: %v %v", m, err)
	}
	if evs := lintEvents(srvA); len(evs) != 1 || evs[0].Fields["mode"] != "strict" || evs[0].Fields["previous_mode"] != "warn" || evs[0].Fields["set_by"] != "authority b" {
		t.Fatalf("the raise is not in the audit log as B's: %+v", evs)
	}

	for name, c := range map[string]*client.Client{"A (warn)": a, "B (strict)": b} {
		_, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open})
		refused(name+" apply", err)
		_, err = c.Policy.CheckPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open})
		refused(name+" CheckPolicy", err)
		_, err = c.Policy.RollbackPolicy(ctx, &wardv1.RollbackPolicyRequest{Version: v1.Version})
		refused(name+" rollback", err)
		if _, err := c.Policy.CheckPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: fenced}); err != nil {
			t.Fatalf("%s refused a fenced set: %v", name, err)
		}
	}

	// A restart of the warn authority keeps the stored mode.
	srvA.Stop()
	srvA, a = startOne("a", config.FederationLintWarn)
	_, err = a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open})
	refused("A after its restart", err)

	// Only the admin action lowers it, audited with its actor.
	if _, err := a.Policy.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "lax"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("an unknown mode: %v", err)
	}
	m, err = a.Policy.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "warn", Comment: "migration window"})
	if err != nil || m.Mode != "warn" || m.Actor == "" || m.Actor == "authority b" || m.Comment != "migration window" {
		t.Fatalf("lowering: %v %v", m, err)
	}
	evs := lintEvents(srvA)
	last := evs[len(evs)-1]
	if last.Fields["mode"] != "warn" || last.Fields["set_by"] != m.Actor || last.Actor != m.Actor || last.Fields["comment"] != "migration window" {
		t.Fatalf("the lowering is not audited with its actor: %+v", last)
	}
	if _, err := a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open}); err != nil {
		t.Fatalf("A refused after the mode was lowered: %v", err)
	}
	_, err = b.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"r.cedar": []byte(openPermit)}})
	refused("B (its own config) after the lowering", err)
	if m, err := b.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{}); err != nil || m.Mode != "warn" || !m.LocalStrict {
		t.Fatalf("B's view of the lowered mode: %v %v", m, err)
	}

	// B's next unseal raises it again.
	srvB.Stop()
	_, _ = startOne("b", config.FederationLintStrict)
	_, err = a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"q.cedar": []byte(openPermit)}})
	refused("A after B restarted", err)
}

// TestPolicyLintModeOnlyOnTheAdminSocket: the attack. Lowering the stored
// mode is an operator action: a client of the Node API (reachable before
// authentication, and by agents) cannot call it, and a sealed authority
// changes nothing.
func TestPolicyLintModeOnlyOnTheAdminSocket(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	admin := wardv1.NewPolicyClient(e.conn)
	if _, err := admin.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "strict"}); err != nil {
		t.Fatal(err)
	}
	node := wardv1.NewPolicyClient(dialNode(t, e, nil, e.srv.NodeAPIAddress()))
	if _, err := node.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "warn"}); err == nil {
		t.Fatal("the Node API lowered the lint mode for an unauthenticated client")
	}
	if m, err := admin.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{}); err != nil || m.Mode != "strict" {
		t.Fatalf("mode after the Node API attempt: %v %v", m, err)
	}
	if _, err := wardv1.NewOperatorClient(e.conn).Seal(ctx, &wardv1.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "warn"}); err == nil {
		t.Fatal("a sealed authority accepted a lint mode change")
	}
}
