package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyLifecycleThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	s.InitAndUnseal()
	a := s.Addr
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
	r := Ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments:443")
	if r.Code == 0 || !strings.Contains(r.Stderr, "no policy has been applied") {
		t.Fatalf("test without policy: %d %q", r.Code, r.Stderr)
	}
	// A syntax error names file, line and column, and applies nothing.
	r = Ward(t, a, "", "policy", "apply", allow, bad)
	if r.Code == 0 || !strings.Contains(r.Stderr, "bad.cedar:2:") {
		t.Fatalf("syntax error: %d %q", r.Code, r.Stderr)
	}
	if out := MustWard(t, a, "", "policy", "list"); strings.Count(out, "\n") != 1 {
		t.Fatalf("a failed apply left a version:\n%s", out)
	}
	MustWard(t, a, "", "policy", "apply", allow, "-m", "first")
	MustWard(t, a, "", "policy", "apply", allow, forbid)
	out := MustWard(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments:443")
	if !strings.HasPrefix(out, "ALLOW") || !strings.Contains(out, "frontend-to-payments") {
		t.Fatalf("allowed request:\n%s", out)
	}
	r = Ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/batch", "--action", "connect", "--resource", "service:payments")
	if r.Code != 3 || !strings.Contains(r.Stdout, "DENY (forbid)") || !strings.Contains(r.Stdout, "no-batch") {
		t.Fatalf("denied request: %d\n%s", r.Code, r.Stdout)
	}
	// Offline, from local files, no authority needed.
	out = MustWard(t, "unix:///nonexistent.sock", "", "policy", "test", "-f", allow, "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if !strings.Contains(out, "by local files") {
		t.Fatalf("offline test:\n%s", out)
	}
	diff := MustWard(t, a, "", "policy", "diff")
	if !strings.Contains(diff, "+ policy no-batch") {
		t.Fatalf("diff:\n%s", diff)
	}
	MustWard(t, a, "", "revoke", "--spiffe-id", "spiffe://e2e.example.org/frontend")
	r = Ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if r.Code != 3 || !strings.Contains(r.Stdout, "deny-list") {
		t.Fatalf("revoked identity: %d\n%s", r.Code, r.Stdout)
	}
	// Rolling back to v1 keeps the revocation.
	MustWard(t, a, "", "policy", "rollback", "1")
	r = Ward(t, a, "", "policy", "test", "--principal", "spiffe://e2e.example.org/frontend", "--action", "connect", "--resource", "service:payments")
	if r.Code != 3 {
		t.Fatalf("rollback un-revoked: %d\n%s", r.Code, r.Stdout)
	}
	show := MustWard(t, a, "", "policy", "show")
	if !strings.Contains(show, "policy version 4") || strings.Contains(show, "no-batch") || !strings.Contains(show, "id     spiffe://e2e.example.org/frontend") {
		t.Fatalf("show after rollback:\n%s", show)
	}
	list := MustWard(t, a, "", "policy", "list")
	if !strings.Contains(list, "rollback to 1") {
		t.Fatalf("list:\n%s", list)
	}
	tail := MustWard(t, a, "", "audit", "tail", "-n", "100")
	for _, op := range []string{"policy.apply", "policy.revoke", "policy.rollback"} {
		if !strings.Contains(tail, op) {
			t.Errorf("audit lacks %s", op)
		}
	}
}
