package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReportCLI runs `ward report` against a dev authority: a rotation and
// a revocation show up with the audit evidence they come from, the log is
// verified, drift says it is not configured, and the HTML is one page.
func TestReportCLI(t *testing.T) {
	addr := devAuthority(t)
	must := func(args ...string) string {
		t.Helper()
		out, err := ward(t, addr, args...)
		if err != nil {
			t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	must("key", "create", "tenant-a/payments", "--classification", "confidential")
	must("key", "rotate", "tenant-a/payments")
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal, action, resource);`), 0o600)
	must("policy", "apply", pol)
	must("revoke", "--spiffe-id", "spiffe://cli.example.org/stolen")
	state := filepath.Join(dir, "state")
	out := must("report", "--format", "json", "--state-dir", state)
	var r struct {
		TrustDomain string `json:"trust_domain"`
		Rotation    struct {
			Keys      int    `json:"keys"`
			Rotations int    `json:"rotation_events"`
			Newest    uint64 `json:"newest_rotation_seq"`
		} `json:"key_rotation"`
		Revocations struct {
			Count int `json:"count"`
			Items []struct {
				Subjects, Evidence, PolicyVersion string
			} `json:"items"`
		} `json:"revocations"`
		Audit struct {
			Checked, Verified bool
			Size              uint64
		} `json:"audit"`
		Drift struct {
			Configured bool `json:"configured"`
		} `json:"drift"`
		Certificates struct {
			CAKeys []any `json:"ca_keys"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.TrustDomain != "cli.example.org" || r.Rotation.Keys != 1 || r.Rotation.Rotations != 1 || r.Rotation.Newest == 0 {
		t.Errorf("rotation: %+v", r)
	}
	if r.Revocations.Count != 1 || !strings.Contains(r.Revocations.Items[0].Subjects, "spiffe://cli.example.org/stolen") ||
		!strings.Contains(r.Revocations.Items[0].Evidence, "audit seq") {
		t.Errorf("revocations: %+v", r.Revocations)
	}
	if !r.Audit.Checked || !r.Audit.Verified || r.Audit.Size == 0 {
		t.Errorf("audit: %+v", r.Audit)
	}
	if r.Drift.Configured || len(r.Certificates.CAKeys) == 0 {
		t.Errorf("drift/certificates: %+v", r)
	}
	html := filepath.Join(dir, "report.html")
	must("report", "-o", html, "--no-verify")
	b, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "tenant-a/payments", "drift: not configured", "not verified"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the HTML report lacks %q", want)
		}
	}
	if fi, _ := os.Stat(html); fi.Mode().Perm() != 0o600 {
		t.Errorf("report mode %v", fi.Mode())
	}
	if _, err := ward(t, addr, "report", "--format", "pdf"); err == nil {
		t.Error("--format pdf was accepted")
	}
}
