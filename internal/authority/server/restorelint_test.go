package server

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// TestRestoreNeverLowersTheLintMode is the attack: a backup taken while
// the cluster was in warn mode (with an open permit in force), restored
// after the cluster turned strict, must not bring warn back. The restored
// authority is strict before it serves anything (an open permit is
// refused), and the restore is audited: operator.backup.restore with the
// backup's mode and the mode kept, and the raise as policy.federation_lint
// set by "backup restore". Only the explicit --keep-backup-lint-mode
// (KeepBackupLintMode) lets the backup's warn stand, audited as such. The
// restore record is consumed at that first unseal.
func TestRestoreNeverLowersTheLintMode(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	srvA, a := start(t, baseConfig(filepath.Join(root, "a")))
	if _, err := a.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	open := map[string][]byte{"p.cedar": []byte(openPermit)}
	if _, err := a.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open}); err != nil {
		t.Fatal(err)
	}
	data, _, err := maintainer{srvA}.Backup(ctx) // taken in warn mode
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Policy.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "strict"}); err != nil {
		t.Fatal(err)
	}

	restoreInto := func(name string, keep bool) (*Server, *client.Client, *wardv1.PolicyLintModeResponse, map[string]string) {
		t.Helper()
		cfg := baseConfig(filepath.Join(root, name)) // the same seal key file: it unseals itself
		os.MkdirAll(cfg.DataDir, 0o700)
		dst, err := boltstore.Open(cfg.Storage.Bbolt.Path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := backup.Restore(ctx, bytes.NewReader(data), dst, backup.RestoreOptions{KeepBackupLintMode: keep}); err != nil {
			t.Fatal(err)
		}
		dst.Close()
		srv, c := start(t, cfg)
		if srv.Sealed() {
			t.Fatal("the restored authority did not unseal")
		}
		m, err := c.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var restore map[string]string
		for _, ev := range allEvents(t, srv) {
			if ev.Operation == "operator.backup.restore" {
				if restore != nil {
					t.Fatal("the restore was audited twice")
				}
				restore = ev.Fields
				if ev.Actor != "system:restore" || ev.Result != audit.ResultOK {
					t.Fatalf("restore event: %+v", ev)
				}
			}
		}
		if _, err := srv.raw.Get(ctx, backup.RecordKey); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the restore record outlived the first unseal: %v", err)
		}
		return srv, c, m, restore
	}

	srvB, cB, m, ev := restoreInto("b", false)
	if m.Mode != "strict" || m.Actor != "backup restore" || !strings.Contains(m.Comment, "whose stored mode was warn") {
		t.Fatalf("restored mode: %+v", m)
	}
	if ev["policy_lint"] != backup.LintStricter || ev["backup_lint_mode"] != "warn" || ev["lint_mode"] != "strict" || ev["backup_payload_sha256"] == "" {
		t.Fatalf("restore event fields: %v", ev)
	}
	raised := false
	for _, e := range allEvents(t, srvB) {
		raised = raised || (e.Operation == "policy.federation_lint" && e.Result == audit.ResultOK && e.Fields["set_by"] == "backup restore" &&
			e.Fields["previous_mode"] == "warn" && e.Fields["mode"] == "strict")
	}
	if !raised {
		t.Fatal("the raise is not audited as policy.federation_lint")
	}
	// (another set: re-applying the files in force is never refused)
	open2 := map[string][]byte{"q.cedar": []byte(openPermit)}
	if _, err := cB.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open2}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("the restored authority accepted an open permit: %v", err)
	}

	_, cC, m, ev := restoreInto("c", true)
	if m.Mode != "warn" || ev["policy_lint"] != backup.LintFromBackup || ev["backup_lint_mode"] != "warn" || ev["lint_mode"] != "warn" {
		t.Fatalf("--keep-backup-lint-mode: mode %+v, event %v", m, ev)
	}
	if _, err := cC.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: open2}); err != nil {
		t.Fatalf("the backup's warn mode, kept on request, refused: %v", err)
	}
}
