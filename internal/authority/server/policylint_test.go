package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

const openPermit = `@id("by-path")
permit (principal, action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`

// TestStoredPolicyLintReportedAtUnseal: a policy version the strict lint
// would refuse that is already current (stored in warn mode, or restored
// from a backup) stays in force, and the authority, restarted with
// policy.federation_lint: strict, logs the offending permit at unseal. In
// warn mode the apply's audit event carried the warning.
func TestStoredPolicyLintReportedAtUnseal(t *testing.T) {
	cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
	run := func(lint string) (*Server, *client.Client, *syncbuf.Buffer, func()) {
		t.Helper()
		cfg.Policy.FederationLint = lint
		ctx := context.Background()
		os.MkdirAll(cfg.DataDir, 0o700)
		raw, err := OpenStore(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		sl, err := OpenSeal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		logs := &syncbuf.Buffer{}
		srv, err := New(cfg, raw, sl, slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
		c, err := client.Dial(srv.AdminAddress())
		if err != nil {
			t.Fatal(err)
		}
		return srv, c, logs, func() { c.Close(); srv.Stop(); raw.Close() }
	}

	srv, c, _, stop := run(config.FederationLintWarn)
	if err := srv.DevInit(context.Background()); err != nil {
		stop()
		t.Fatal(err)
	}
	_, err := c.Policy.ApplyPolicy(context.Background(), &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(openPermit)}})
	if err != nil {
		stop()
		t.Fatalf("warn mode refused the set: %v", err)
	}
	found := false
	for _, ev := range allEvents(t, srv) {
		if ev.Operation == "policy.apply" && ev.Result == "ok" {
			found = ev.Fields["federation_warnings"] == "1" && strings.Contains(ev.Fields["federation_warning_policies"], `p.cedar:1:1 (policy "by-path")`)
		}
	}
	stop()
	if !found {
		t.Fatal("the audit event of the apply does not record the federation warning")
	}

	srv, c, logs, stop := run(config.FederationLintStrict)
	defer stop()
	if srv.Sealed() {
		t.Fatal("the keyfile authority did not unseal at start")
	}
	if l := logs.String(); !strings.Contains(l, "policy.federation_lint: strict") || !strings.Contains(l, `by-path`) {
		t.Fatalf("the unseal does not report the current version's open permit:\n%s", l)
	}
	if v, err := c.Policy.GetPolicy(context.Background(), &wardv1.GetPolicyRequest{}); err != nil || v.PolicyCount != 1 {
		t.Fatalf("the stored version is no longer in force: %v %v", v, err)
	}
}
