package cli

import (
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScanCommand: `ward scan` against a TLS 1.2+1.3 server with one CBC
// suite: the table, --json, --sarif, --bundle, and the exit status of
// --fail-on (2 at or above it).
func TestScanCommand(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: []uint16{
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}}
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	out, _ := mustRun(t, nil, "scan", addr, "--bundle", bundle, "--fail-on", "medium")
	for _, want := range []string{"TLSv1.3  offered", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "chain: trusted=true (bundle " + bundle, "LOW       suite-cbc"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	_, _, err := runWard(t, nil, "scan", addr, "--bundle", bundle, "--fail-on", "low")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitScanFindings {
		t.Errorf("--fail-on low: %v, want exit %d", err, exitScanFindings)
	}
	// Without the bundle the chain is untrusted (system roots): high.
	_, _, err = runWard(t, nil, "scan", addr)
	if !errors.As(err, &ee) || ee.code != exitScanFindings {
		t.Errorf("untrusted chain: %v, want exit %d", err, exitScanFindings)
	}

	out, _ = mustRun(t, nil, "scan", addr, "--bundle", bundle, "--json", "--fail-on", "never")
	var doc struct {
		Results []struct {
			Chain    struct{ Trusted bool }
			Findings []struct{ Rule string }
		}
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Results) != 1 || !doc.Results[0].Chain.Trusted {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	out, _ = mustRun(t, nil, "scan", addr, "--bundle", bundle, "--sarif", "--fail-on", "never")
	if !strings.Contains(out, `"version": "2.1.0"`) || !strings.Contains(out, `"ruleId": "suite-cbc"`) {
		t.Errorf("--sarif:\n%s", out)
	}

	for _, bad := range [][]string{
		{"scan", addr, "--fail-on", "severe"},
		{"scan", addr, "--json", "--sarif"},
		{"scan", addr, "--bundle", filepath.Join(t.TempDir(), "missing.pem")},
		{"scan", addr, "--spiffe-id", "not-an-id"},
	} {
		if _, _, err := runWard(t, nil, bad...); err == nil || errors.As(err, &ee) {
			t.Errorf("ward %s: %v, want a plain error", strings.Join(bad, " "), err)
		}
	}
}
