package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyLifecycleThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, writeConfig(t, dir, ""))
	s.initAndUnseal()
	a := s.addr
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	allow := write("allow.cedar", `@id("frontend-to-payments")
permit(principal == Workload::"spiffe://e2e.example.org/frontend", action == Action::"connect", resource == Service::"payments");
`)
	bad := write("bad.cedar", "permit(principal,\n  action resource);\n")
	forbid := write("forbid.cedar", `@id("no-batch")
forbid(principal == Workload::"spiffe://e2e.example.org/batch", action, resource);
`)

	// Nothing applied yet: test fails with a clear error.
	r := ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments:443")
	if r.code == 0 || !strings.Contains(r.stderr, "no policy has been applied") {
		t.Fatalf("test without policy: %d %q", r.code, r.stderr)
	}
	// A syntax error names file, line and column, and applies nothing.
	r = ward(t, a, "", "policy", "apply", allow, bad)
	if r.code == 0 || !strings.Contains(r.stderr, "bad.cedar:2:") {
		t.Fatalf("syntax error: %d %q", r.code, r.stderr)
	}
	if out := mustWard(t, a, "", "policy", "list"); strings.Count(out, "\n") != 1 {
		t.Fatalf("a failed apply left a version:\n%s", out)
	}
	mustWard(t, a, "", "policy", "apply", allow, "-m", "first")
	mustWard(t, a, "", "policy", "apply", allow, forbid)
	out := mustWard(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments:443")
	if !strings.HasPrefix(out, "ALLOW") || !strings.Contains(out, "frontend-to-payments") {
		t.Fatalf("allowed request:\n%s", out)
	}
	r = ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/batch", "--action", "connect", "--resource", "service:payments")
	if r.code != 3 || !strings.Contains(r.stdout, "DENY (forbid)") || !strings.Contains(r.stdout, "no-batch") {
		t.Fatalf("denied request: %d\n%s", r.code, r.stdout)
	}
	// Offline, from local files, no authority needed.
	out = mustWard(t, "unix:///nonexistent.sock", "", "policy", "test", "-f", allow, "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if !strings.Contains(out, "by local files") {
		t.Fatalf("offline test:\n%s", out)
	}
	diff := mustWard(t, a, "", "policy", "diff")
	if !strings.Contains(diff, "+ policy no-batch") {
		t.Fatalf("diff:\n%s", diff)
	}
	mustWard(t, a, "", "revoke", "--spiffe-id", "spiffe://e2e.example.org/frontend")
	r = ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if r.code != 3 || !strings.Contains(r.stdout, "deny-list") {
		t.Fatalf("revoked identity: %d\n%s", r.code, r.stdout)
	}
	// Rolling back to v1 keeps the revocation.
	mustWard(t, a, "", "policy", "rollback", "1")
	r = ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if r.code != 3 {
		t.Fatalf("rollback un-revoked: %d\n%s", r.code, r.stdout)
	}
	show := mustWard(t, a, "", "policy", "show")
	if !strings.Contains(show, "policy version 4") || strings.Contains(show, "no-batch") || !strings.Contains(show, "id     spiffe://e2e.example.org/frontend") {
		t.Fatalf("show after rollback:\n%s", show)
	}
	list := mustWard(t, a, "", "policy", "list")
	if !strings.Contains(list, "rollback to 1") {
		t.Fatalf("list:\n%s", list)
	}
	tail := mustWard(t, a, "", "audit", "tail", "-n", "100")
	for _, op := range []string{"policy.apply", "policy.revoke", "policy.rollback"} {
		if !strings.Contains(tail, op) {
			t.Errorf("audit lacks %s", op)
		}
	}
}
