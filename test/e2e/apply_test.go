package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/testutil/netutil"
)

// copyDir copies the files of src (recursively) into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestApplyExport runs `ward apply` and `ward export` as a user would,
// on the runnable example in examples/apply: apply, re-apply (nothing
// changes, not even the audit log), a dry-run diff after an edit, the
// export round trip, and broken documents that name file, line and field
// and change nothing.
func TestApplyExport(t *testing.T) {
	dir := t.TempDir()
	// The example is written for `ward server --dev` (trust domain dev.ward.internal).
	cfg := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("trust_domain: dev.ward.internal\ndata_dir: %s\nhttp_address: 127.0.0.1:0\nlog_level: info\nidentity:\n  node_api_address: %s\n",
		dir, netutil.FreeLoopbackAddr(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	s := StartServer(t, dir, cfg)
	s.InitAndUnseal()
	a := s.Addr
	c := s.Client()
	auditSize := func() uint64 {
		t.Helper()
		st, err := c.Operator.Status(context.Background(), &wardv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st.AuditSize
	}
	state := func() string {
		t.Helper()
		return MustWard(t, a, "", "export")
	}

	docs := filepath.Join(t.TempDir(), "apply")
	copyDir(t, filepath.Join("..", "..", "examples", "apply"), docs)

	// Apply the example directory.
	out := MustWard(t, a, "", "apply", "-f", docs)
	for _, want := range []string{"+ key tenant-a/payments", "+ entry spiffe://dev.ward.internal/payments", "+ policy file policies/connect.cedar",
		"Applied: 2 key(s) created, 0 changed; 2 entry(ies) created, 0 changed, 0 deleted in 1 batch(es); policy version"} {
		if !strings.Contains(out, want) {
			t.Fatalf("first apply lacks %q:\n%s", want, out)
		}
	}

	// Re-apply: nothing changes, nothing is written, not even an audit event.
	size := auditSize()
	out = MustWard(t, a, "", "apply", "-f", docs)
	if !strings.Contains(out, "No changes") || strings.Contains(out, "Applied") {
		t.Fatalf("second apply:\n%s", out)
	}
	if got := auditSize(); got != size {
		t.Fatalf("a no-change apply wrote %d audit event(s)", got-size)
	}

	// An edit shows as a field-level diff in a dry run, which changes nothing.
	entries := filepath.Join(docs, "entries.yaml")
	b, err := os.ReadFile(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entries, []byte(strings.Replace(string(b), "tier: backend", "tier: critical", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	before := state()
	out = MustWard(t, a, "", "apply", "--dry-run", "-f", docs)
	if !strings.Contains(out, "~ entry spiffe://dev.ward.internal/payments") || !strings.Contains(out, `labels.tier: "backend" → "critical"`) ||
		!strings.Contains(out, "Plan: 0 to create, 1 to change, 0 to delete.") {
		t.Fatalf("dry-run diff:\n%s", out)
	}
	if state() != before || auditSize() != size {
		t.Fatal("a dry run changed the authority")
	}
	out = MustWard(t, a, "", "apply", "-f", docs)
	if !strings.Contains(out, "0 entry(ies) created, 1 changed") {
		t.Fatalf("applying the edit:\n%s", out)
	}

	// A federation relationship (https_web needs no bootstrap bundle; the
	// endpoint need not answer for the relationship to be added).
	fed := filepath.Join(docs, "federation.yaml")
	if err := os.WriteFile(fed, []byte("kind: Federation\ntrust_domain: b.example\nendpoint_url: https://127.0.0.1:9/\nprofile: https_web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = MustWard(t, a, "", "apply", "-f", docs)
	if !strings.Contains(out, "+ federation b.example") || !strings.Contains(out, "1 federation relationship(s) added, 0 removed") {
		t.Fatalf("applying a federation relationship:\n%s", out)
	}
	if out = MustWard(t, a, "", "apply", "-f", docs); !strings.Contains(out, "No changes") {
		t.Fatalf("re-applying a federation relationship:\n%s", out)
	}

	// Export round trip: the export applied to the same authority is no change.
	exported := filepath.Join(t.TempDir(), "export.yaml")
	MustWard(t, a, "", "export", "-o", exported)
	if b, err := os.ReadFile(exported); err != nil || !strings.Contains(string(b), "kind: Federation\ntrust_domain: b.example\n") {
		t.Fatalf("export lacks the federation relationship (%v):\n%s", err, b)
	}
	out = MustWard(t, a, "", "apply", "--dry-run", "--prune", "-f", exported)
	if !strings.Contains(out, "No changes") {
		t.Fatalf("export round trip is not a no-op:\n%s", out)
	}

	// --prune proposes deleting what the documents no longer declare, of
	// the kinds they declare (no Federation document: relationships stay).
	web := filepath.Join(t.TempDir(), "only-payments.yaml")
	if err := os.WriteFile(web, []byte("kind: Entry\nspiffe_id: spiffe://dev.ward.internal/payments\nparent_id: spiffe://dev.ward.internal/ward/agent/node-1\nselectors: [unix:uid:1000]\nttl: 1h\ndns_names: [payments.internal]\nlabels: {app: payments, tier: critical}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = MustWard(t, a, "", "apply", "--dry-run", "--prune", "-f", web)
	if !strings.Contains(out, "- entry spiffe://dev.ward.internal/web") || strings.Contains(out, "federation") ||
		!strings.Contains(out, "Plan: 0 to create, 0 to change, 1 to delete.") {
		t.Fatalf("prune plan:\n%s", out)
	}

	// Broken documents name file, line and field and change nothing: one
	// caught while reading (a misspelt field), one only the authority
	// knows (a reserved SPIFFE ID), each beside a valid new key.
	before, size = state(), auditSize()
	bad := t.TempDir()
	badFile := filepath.Join(bad, "bad.yaml")
	key := "kind: Key\nname: tenant-c/new\nclassification: internal\n---\n"
	cases := []struct{ doc, want string }{
		{key + "kind: Entry\nspiffe_id: spiffe://dev.ward.internal/x\nparent_id: spiffe://dev.ward.internal/ward/agent/node-1\nselector: [unix:uid:5]\n",
			badFile + ":8: field selector: unknown field in the Entry document: did you mean selectors?"},
		{key + "kind: Entry\nspiffe_id: spiffe://dev.ward.internal/ward/mine\nparent_id: spiffe://dev.ward.internal/ward/agent/node-1\nselectors: [unix:uid:5]\n",
			badFile + ":6: field spiffe_id: the authority refused this entry"},
		{key + "kind: Policy\nname: broken.cedar\ncedar: |\n  permit (principal, action == Action::\"conect\", resource);\n",
			badFile + ":8: field cedar: validation error"},
	}
	for _, tc := range cases {
		if err := os.WriteFile(badFile, []byte(tc.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"apply", "-f", bad}, {"apply", "--dry-run", "-f", bad}} {
			r := Ward(t, a, "", args...)
			if r.Code == 0 || !strings.Contains(r.Stderr, tc.want) || !strings.Contains(r.Stderr, "nothing was changed") {
				t.Fatalf("ward %v on a broken document: exit %d\nstdout: %s\nstderr: %s\nwant %q", args, r.Code, r.Stdout, r.Stderr, tc.want)
			}
		}
		if state() != before || auditSize() != size {
			t.Fatalf("a broken document changed the authority:\n%s", tc.doc)
		}
	}
}
