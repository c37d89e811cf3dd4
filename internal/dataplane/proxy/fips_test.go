package proxy_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestFIPS140 re-runs the in-process proxy tests in a child test binary with
// GODEBUG=fips140=on (Go's FIPS 140-3 mode): the child checks that the mode
// is really on (WARD_EXPECT_FIPS) and every handshake, rotation and policy
// decision must work as without it.
func TestFIPS140(t *testing.T) {
	if os.Getenv("WARD_EXPECT_FIPS") != "" {
		t.Skip("already the FIPS child")
	}
	if testing.Short() {
		t.Skip("FIPS re-run skipped in -short mode")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^(TestAllowAndDeny|TestRotationsUnderLoad|TestPolicyChangeClosesRunningClient|TestOpenSSL|TestCurl)$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on", "WARD_EXPECT_FIPS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in-process proxy tests under GODEBUG=fips140=on failed: %v\n%s", err, out)
	}
	for _, name := range []string{"TestAllowAndDeny", "TestRotationsUnderLoad", "TestPolicyChangeClosesRunningClient"} {
		if !strings.Contains(string(out), "--- PASS: "+name) {
			t.Fatalf("%s did not pass under FIPS mode:\n%s", name, out)
		}
	}
}
