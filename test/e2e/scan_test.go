package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestScanAuthorityListeners runs the ward binary's `ward scan` against a
// dev authority's own TLS listeners, verifying their chains to the
// authority's bundle (fetched over the admin socket named by
// WARD_ADDRESS): exit 0 at --fail-on medium, the SPIFFE ID checked, and
// exit 2 when the expected SPIFFE ID is wrong.
func TestScanAuthorityListeners(t *testing.T) {
	logs := &syncbuf.Buffer{}
	cmd := exec.Command(WardBin, "server", "--dev", "--dev-dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopProcess(cmd) })
	deadline := time.Now().Add(time.Minute)
	for !logs.Contains("Press Ctrl-C to stop") {
		if time.Now().After(deadline) {
			t.Fatalf("the dev authority did not come up:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var admin, nodeAPI, td string
	for _, l := range strings.Split(logs.String(), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "node" && f[1] == "API:":
			nodeAPI = f[2]
		case len(f) >= 3 && f[0] == "trust" && f[1] == "domain:":
			td = f[2]
		case len(f) == 2 && f[0] == "export" && strings.HasPrefix(f[1], "WARD_ADDRESS="):
			admin = strings.TrimPrefix(f[1], "WARD_ADDRESS=")
		}
	}
	if admin == "" || nodeAPI == "" || td == "" {
		t.Fatalf("no admin socket, node API or trust domain in:\n%s", logs.String())
	}
	serverID := "spiffe://" + td + "/ward/server"

	r := Ward(t, admin, "", "scan", nodeAPI, "--spiffe-id", serverID, "--fail-on", "medium", "--json")
	if r.Code != 0 {
		t.Fatalf("ward scan %s: exit %d\n%s\n%s", nodeAPI, r.Code, r.Stdout, r.Stderr)
	}
	var doc struct {
		Results []struct {
			Protocols []struct {
				Version string
				Offered bool
			}
			PostQuantum struct{ Offered, Preferred bool } `json:"post_quantum"`
			Chain       struct {
				Trusted       bool
				Bundle        string
				SPIFFEIDMatch *bool `json:"spiffe_id_match"`
			}
			Findings []struct{ Rule, Severity string }
		}
	}
	if err := json.Unmarshal([]byte(r.Stdout), &doc); err != nil || len(doc.Results) != 1 {
		t.Fatalf("--json: %v\n%s", err, r.Stdout)
	}
	res := doc.Results[0]
	if !res.Chain.Trusted || res.Chain.Bundle != "authority "+td || res.Chain.SPIFFEIDMatch == nil || !*res.Chain.SPIFFEIDMatch {
		t.Errorf("node API chain: %+v", res.Chain)
	}
	if !res.PostQuantum.Offered || !res.PostQuantum.Preferred {
		t.Errorf("node API post-quantum: %+v", res.PostQuantum)
	}
	for _, p := range res.Protocols {
		if p.Offered && p.Version != "TLSv1.3" && p.Version != "TLSv1.2" {
			t.Errorf("node API offers %s", p.Version)
		}
	}
	t.Logf("node API findings: %v", res.Findings)

	r = Ward(t, admin, "", "scan", nodeAPI, "--spiffe-id", "spiffe://"+td+"/not/the/server")
	if r.Code != 2 || !strings.Contains(r.Stdout, "spiffe-id-mismatch") {
		t.Errorf("wrong SPIFFE ID: exit %d, want 2\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
}
