package cli

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
	"github.com/wardproject/ward/internal/authority/config"
)

// wardStreams is ward with stderr kept apart.
func wardStreams(t *testing.T, addr string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := identityRoot()
	var out, errb bytes.Buffer
	if addr != "" {
		args = append([]string{"--address", addr}, args...)
	}
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(""))
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

const (
	pathOnlyPolicy = `@id("by-path")
permit (principal, action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`
	fencedPolicy = `@id("by-path-home")
permit (principal in TrustDomain::"cli.example.org", action == Action::"connect", resource == Service::"api")
when { principal.path == "/ns/shop/web" };
`
)

func writePolicy(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "p.cedar")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPolicyLintCLI: ward policy lint prints the federation warning with
// file:line:column and the policy id, exits 1 with --strict only, and is
// quiet on a constrained permit; ward policy test -f prints it too.
func TestPolicyLintCLI(t *testing.T) {
	open, fenced := writePolicy(t, pathOnlyPolicy), writePolicy(t, fencedPolicy)
	out, errOut, err := wardStreams(t, "", "policy", "lint", open)
	if err != nil || !strings.Contains(errOut, open+":1:1: federation warning in policy \"by-path\"") || !strings.Contains(out, "1 warning(s)") {
		t.Fatalf("lint: err %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	_, _, err = wardStreams(t, "", "policy", "lint", "--strict", open)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("lint --strict: err %v, want exit 1", err)
	}
	out, errOut, err = wardStreams(t, "", "policy", "lint", "--strict", fenced)
	if err != nil || errOut != "" || !strings.Contains(out, "0 warning(s)") {
		t.Fatalf("lint --strict of a fenced permit: err %v\n%s\n%s", err, out, errOut)
	}
	_, errOut, err = wardStreams(t, "", "policy", "test", "-f", open, "--principal", "spiffe://peer.example/ns/shop/web",
		"--action", "connect", "--resource", "service:api")
	if err != nil || !strings.Contains(errOut, "federation warning") {
		t.Fatalf("policy test -f: err %v, stderr %s", err, errOut)
	}
	// A syntax error is an error, not a warning.
	if _, _, err := wardStreams(t, "", "policy", "lint", writePolicy(t, "permit (")); err == nil {
		t.Fatal("lint accepted a syntax error")
	}
}

// TestPolicyApplyStrictCLI: apply prints the warnings and stores the set;
// apply --strict refuses it and stores nothing (the version count is
// unchanged); a clean set applies under --strict.
func TestPolicyApplyStrictCLI(t *testing.T) {
	addr := devAuthority(t)
	versions := func() int {
		t.Helper()
		out, _, err := wardStreams(t, addr, "policy", "list")
		if err != nil {
			t.Fatalf("policy list: %v", err)
		}
		n := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if strings.TrimSpace(l) != "" {
				n++
			}
		}
		return n
	}
	open, fenced := writePolicy(t, pathOnlyPolicy), writePolicy(t, fencedPolicy)
	v0 := versions()
	_, errOut, err := wardStreams(t, addr, "policy", "apply", "--strict", open)
	if err == nil || !strings.Contains(err.Error(), "nothing was applied") || !strings.Contains(errOut, "federation warning") {
		t.Fatalf("apply --strict: err %v, stderr %s", err, errOut)
	}
	if v := versions(); v != v0 {
		t.Fatalf("apply --strict stored a version: %d -> %d", v0, v)
	}
	out, errOut, err := wardStreams(t, addr, "policy", "apply", open)
	if err != nil || !strings.Contains(out, "applied") || !strings.Contains(errOut, `federation warning in policy "by-path"`) {
		t.Fatalf("apply: err %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	if v := versions(); v != v0+1 {
		t.Fatalf("apply: versions %d -> %d", v0, v)
	}
	out, errOut, err = wardStreams(t, addr, "policy", "apply", "--strict", fenced)
	if err != nil || errOut != "" || !strings.Contains(out, "applied") {
		t.Fatalf("apply --strict of a clean set: err %v\n%s\n%s", err, out, errOut)
	}
	if v := versions(); v != v0+2 {
		t.Fatalf("versions %d -> %d", v0, v)
	}
}

// TestAuthorityStrictFederationLint: with policy.federation_lint: strict
// the authority itself refuses a set whose permit is open to federated
// trust domains, whoever sends it: `ward policy apply` without --strict
// (an old CLI) and a script on the admin API both get the refusal, naming
// the policy and the fixes, and no version is stored. A fenced set applies.
func TestAuthorityStrictFederationLint(t *testing.T) {
	addr := devAuthority(t, func(c *config.Server) { c.Policy.FederationLint = config.FederationLintStrict })
	_, errOut, err := wardStreams(t, addr, "policy", "apply", writePolicy(t, pathOnlyPolicy))
	if err == nil || !strings.Contains(err.Error(), "policy.federation_lint: strict") || !strings.Contains(err.Error(), `(policy "by-path")`) {
		t.Fatalf("apply without --strict to a strict authority: err %v\nstderr %s", err, errOut)
	}
	c, err := client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	_, err = c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(pathOnlyPolicy)}, Comment: "script"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `@federated("allow")`) {
		t.Fatalf("admin API apply to a strict authority: %v", err)
	}
	if l, err := c.Policy.ListPolicyVersions(ctx, &wardv1.ListPolicyVersionsRequest{}); err != nil || len(l.Versions) != 0 {
		t.Fatalf("a refused set was stored: %v %v", l, err)
	}
	if out, errOut, err := wardStreams(t, addr, "policy", "apply", writePolicy(t, fencedPolicy)); err != nil || !strings.Contains(out, "applied") {
		t.Fatalf("a fenced set: err %v\n%s\n%s", err, out, errOut)
	}
}

// TestApplyDocumentsStrictLintChangesNothing: `ward apply` of documents
// with a key and a policy set the strict authority refuses changes
// nothing: the authority's check (CheckPolicy) runs before the key is
// created. Against a warn authority the same documents apply and the
// warning is printed.
func TestApplyDocumentsStrictLintChangesNothing(t *testing.T) {
	docs := `kind: Key
name: tenant-a/payments
classification: confidential
---
kind: Policy
name: open.cedar
cedar: |
` + indent(pathOnlyPolicy)
	dir := t.TempDir()
	f := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(f, []byte(docs), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := devAuthority(t, func(c *config.Server) { c.Policy.FederationLint = config.FederationLintStrict })
	_, errOut, err := wardStreams(t, addr, "apply", "-f", f)
	if err == nil || !strings.Contains(err.Error(), "policy.federation_lint: strict") || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("ward apply to a strict authority: %v\n%s", err, errOut)
	}
	if out, _, err := wardStreams(t, addr, "key", "list"); err != nil || strings.Contains(out, "tenant-a/payments") {
		t.Fatalf("a refused apply created the key: %v\n%s", err, out)
	}
	addr = devAuthority(t)
	out, errOut, err := wardStreams(t, addr, "apply", "-f", f)
	if err != nil || !strings.Contains(errOut, `policy warning: open.cedar:1:1 (policy "by-path")`) {
		t.Fatalf("ward apply to a warn authority: %v\n%s\n%s", err, out, errOut)
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// TestPolicyLintModeCLI: `ward policy lint-mode` shows the cluster's stored
// mode; `lint-mode strict` makes a warn-configured authority refuse an open
// permit, `lint-mode warn` (the audited admin action) lowers it again, and
// an unknown mode is refused.
func TestPolicyLintModeCLI(t *testing.T) {
	addr := devAuthority(t)
	open := writePolicy(t, pathOnlyPolicy)
	if out, _, err := wardStreams(t, addr, "policy", "lint-mode"); err != nil || !strings.Contains(out, "Federation lint mode (cluster): warn") {
		t.Fatalf("lint-mode: %v\n%s", err, out)
	}
	if out, _, err := wardStreams(t, addr, "policy", "lint-mode", "strict", "-m", "federating soon"); err != nil ||
		!strings.Contains(out, "Federation lint mode (cluster): strict (set by ") {
		t.Fatalf("lint-mode strict: %v\n%s", err, out)
	}
	if _, _, err := wardStreams(t, addr, "policy", "apply", open); err == nil || !strings.Contains(err.Error(), `(policy "by-path")`) {
		t.Fatalf("apply under the stored strict mode: %v", err)
	}
	if _, _, err := wardStreams(t, addr, "policy", "lint-mode", "off"); err == nil || !strings.Contains(err.Error(), "want warn or strict") {
		t.Fatalf("lint-mode off: %v", err)
	}
	if out, _, err := wardStreams(t, addr, "policy", "lint-mode", "warn"); err != nil || !strings.Contains(out, "(cluster): warn") {
		t.Fatalf("lint-mode warn: %v\n%s", err, out)
	}
	if out, _, err := wardStreams(t, addr, "policy", "apply", open); err != nil || !strings.Contains(out, "applied") {
		t.Fatalf("apply after lowering: %v\n%s", err, out)
	}
}

// TestWarnedPolicyInForceCLI: a version stored in warn mode with an open
// permit, in force once the cluster is strict, is named by `ward policy
// lint-mode` (each permit, and the fix) and flagged by `ward operator
// status`; in warn mode lint-mode lists it without the warning, and
// operator status says nothing.
func TestWarnedPolicyInForceCLI(t *testing.T) {
	addr := devAuthority(t)
	if _, _, err := wardStreams(t, addr, "policy", "apply", writePolicy(t, pathOnlyPolicy)); err != nil {
		t.Fatal(err)
	}
	out, _, err := wardStreams(t, addr, "policy", "lint-mode")
	if err != nil || !strings.Contains(out, "Policy version 1 (current) has 1 permit(s) the lint warns about") || strings.Contains(out, "WARNING") {
		t.Fatalf("lint-mode in warn mode: %v\n%s", err, out)
	}
	if out, _, err := wardStreams(t, addr, "operator", "status"); err != nil || strings.Contains(out, "Policy lint") {
		t.Fatalf("operator status in warn mode: %v\n%s", err, out)
	}
	out, _, err = wardStreams(t, addr, "policy", "lint-mode", "strict")
	if err != nil || !strings.Contains(out, "WARNING: policy version 1, in force, has 1 permit(s) strict refuses") || !strings.Contains(out, `(policy "by-path")`) {
		t.Fatalf("lint-mode strict: %v\n%s", err, out)
	}
	if out, _, err := wardStreams(t, addr, "operator", "status"); err != nil ||
		!strings.Contains(out, "Policy lint:      strict; WARNING: version 1, in force, has 1 permit(s) strict refuses") {
		t.Fatalf("operator status under strict: %v\n%s", err, out)
	}
}
