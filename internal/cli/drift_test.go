package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/drift"
	"github.com/wardproject/ward/internal/governance/scan"
	"github.com/wardproject/ward/internal/shared/telemetry"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// TestDriftEndToEnd runs the dev mesh (a real authority, agent and two
// proxies in this process, as `ward dev up` does) and declares a posture
// of TLS 1.3 and 1h SVIDs: an entry asking for 24h SVIDs and a key not
// rotated for 40 days are found with the fix to run, the api proxy's
// telemetry is what drift compares, and running the fixes clears them.
func TestDriftEndToEnd(t *testing.T) {
	root := t.TempDir()
	m := &mesh{Dir: filepath.Join(root, "mesh"), Shown: "mesh", TrustDomain: "drift.example.org"}
	if err := prepareMeshDir(m.Dir); err != nil {
		t.Fatal(err)
	}
	dir := m.path("authority")
	cfg := &config.Server{TrustDomain: m.TrustDomain, DataDir: dir, HTTPAddress: "127.0.0.1:0", LogLevel: "warn",
		Seal:     config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "dev-seal.key")},
		KMS:      config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)},
		Identity: config.Identity{NodeAPIAddress: "127.0.0.1:0"}}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o700)
	ctx, cancel := context.WithCancel(context.Background())
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := server.OpenSeal(cfg)
	srv, err := server.New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// The authority's clock runs offset by skew: a key created while it is
	// -40 days is 40 days old.
	var skew atomic.Int64
	srv.SetClock(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
	srv.SetDriftEvaluator(drift.Evaluate, time.Hour) // evaluated on demand below
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv.SetTelemetryInterval(2 * time.Second)
	if err := srv.DevInit(ctx); err != nil {
		t.Fatal(err)
	}
	wait, err := startMesh(ctx, srv, m, io.Discard)
	t.Cleanup(func() {
		cancel()
		if wait != nil {
			wait()
		}
		srv.Stop()
		raw.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.AdminAddress()
	must := func(args ...string) string {
		t.Helper()
		out, err := ward(t, addr, args...)
		if err != nil {
			t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// A file that does not parse changes nothing, and says where and how.
	bad := filepath.Join(root, "bad.yaml")
	os.WriteFile(bad, []byte("defaults:\n  tls: {min_version: \"1.1\"}\n"), 0o600)
	if out, err := ward(t, addr, "posture", "set", "-f", bad); err == nil || !strings.Contains(err.Error(), `defaults.tls.min_version is "1.1": use "1.2" or "1.3"`) {
		t.Fatalf("bad posture: %v\n%s", err, out)
	}
	file := filepath.Join(root, "posture.yaml")
	os.WriteFile(file, []byte(`defaults:
  tls: {min_version: "1.3", groups: [X25519MLKEM768]}
  max_svid_ttl: 1h
  rotation:
    confidential: {period: 30d}
  mesh:
    services: [api]
`), 0o600)
	if out := must("posture", "set", "-f", file, "-m", "first"); !strings.Contains(out, "Posture version 1 stored") {
		t.Fatalf("posture set: %s", out)
	}
	if out := must("posture", "history"); !strings.Contains(out, "first") {
		t.Fatalf("posture history: %s", out)
	}
	if out := must("posture", "get"); !strings.Contains(out, "max_svid_ttl: 1h") {
		t.Fatalf("posture get: %s", out)
	}

	skew.Store(int64(-40 * 24 * time.Hour))
	must("key", "create", "ledger", "--classification", "confidential")
	skew.Store(0)
	// Parented to another node, so no agent here issues its SVIDs.
	out := must("entry", "create", "--spiffe-id", "spiffe://drift.example.org/batch", "--parent", "spiffe://drift.example.org/ward/agent/other",
		"--selector", "unix:uid:4242", "--ttl", "24h")
	entryID := regexp.MustCompile(`Entry ID:\s+([0-9a-f]{32})`).FindStringSubmatch(out)[1]

	// The api proxy's telemetry reaches the authority through the agent.
	deadline := time.Now().Add(30 * time.Second)
	for !proxyReported(srv.Telemetry(), "api") {
		if time.Now().After(deadline) {
			t.Fatalf("no telemetry of the api proxy reached the authority: %+v", srv.Telemetry())
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err = ward(t, addr, "drift", "--json")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitDriftFindings {
		t.Fatalf("ward drift with drift: %v (want exit %d)\n%s", err, exitDriftFindings, out)
	}
	var res driftResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]string{
		drift.RuleSVIDMaxTTL + " entry/" + entryID: "ward entry update " + entryID + " --ttl 1h",
		drift.RuleRotationPeriod + " key/ledger":   "ward key rotate ledger",
	}
	for _, f := range res.Findings {
		fix, ok := want[f.ID()]
		if !ok {
			t.Errorf("unexpected finding: %+v", f)
			continue
		}
		if !strings.Contains(f.Fix, fix) || f.Evidence == "" {
			t.Errorf("%s: fix %q, want %q", f.ID(), f.Fix, fix)
		}
		delete(want, f.ID())
	}
	if len(want) != 0 {
		t.Fatalf("findings missing: %v (got %+v)", want, res.Findings)
	}
	if !proxyReported(res.State.Nodes, "api") || len(res.State.Services) != 1 || !res.State.Services[0].PolicyCovered {
		t.Fatalf("the state evaluated lacks the api proxy or its policy: nodes %+v services %+v", res.State.Nodes, res.State.Services)
	}
	// The table says the same, with the evidence and the fix.
	out, _ = ward(t, addr, "drift")
	if !strings.Contains(out, "rotation.period") || !strings.Contains(out, "last rotated 40d") || !strings.Contains(out, "fix:      ward entry update "+entryID) {
		t.Fatalf("ward drift table:\n%s", out)
	}
	if _, err := srv.EvaluateDrift(ctx); err != nil {
		t.Fatal(err)
	}
	if m := metricsText(t, srv); !strings.Contains(m, `ward_drift_findings{rule="rotation.period",severity="high"} 1`) {
		t.Fatalf("/metrics lacks the finding:\n%s", m)
	}

	// Fix both objects: drift clears.
	must("entry", "update", entryID, "--ttl", "1h")
	must("key", "rotate", "ledger")
	if out := must("drift", "--fail-on", "low"); !strings.Contains(out, "No drift") {
		t.Fatalf("after the fixes:\n%s", out)
	}
	if rep, ok := srv.Drift(); !ok || len(rep.Findings) != 0 {
		t.Fatalf("the authority's latest evaluation: %+v", rep)
	}
	if m := metricsText(t, srv); strings.Contains(m, `rule="rotation.period"`) {
		t.Fatalf("/metrics still shows the resolved finding:\n%s", m)
	}

	// Reality by scan: the api's listener offers TLS 1.3 only and requires
	// a client certificate, but (Go's defaults) accepts classical groups
	// besides the hybrid the posture allows: a medium finding, so
	// --fail-on high passes.
	out, err = ward(t, addr, "drift", "--scan", "--json", "--fail-on", "high")
	if err != nil {
		t.Fatalf("ward drift --scan: %v\n%s", err, out)
	}
	res = driftResult{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(res.State.Scans) != 1 {
		t.Fatalf("scans: %+v", res.State.Scans)
	}
	sc := res.State.Scans[0]
	if sc.Error != "" || sc.Service != "api" || !sc.ClientCertRequired || strings.Join(sc.Versions, ",") != "1.3" {
		t.Fatalf("the scan of the api listener: %+v", sc)
	}
	if len(res.Findings) != 1 || res.Findings[0].Rule != drift.RuleTLSGroups || res.Findings[0].Source != "scan" || res.Findings[0].Object != "endpoint/"+sc.Target {
		t.Fatalf("scan findings: %+v", res.Findings)
	}

	// ward scan --reported: the same listener, found through the
	// authority, its chain verified against the authority's bundle and
	// its certificate checked against the SPIFFE ID the listener reports.
	out, err = ward(t, addr, "scan", "--reported", "--json", "--fail-on", "never")
	if err != nil {
		t.Fatalf("ward scan --reported: %v\n%s", err, out)
	}
	var sr struct {
		Results []struct {
			Target, Source, Error string
			Chain                 *scan.Chain
		}
	}
	if err := json.Unmarshal([]byte(out), &sr); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	scans := sr.Results
	if len(scans) != 1 || scans[0].Target != sc.Target || !strings.Contains(scans[0].Source, "service api") || scans[0].Error != "" {
		t.Fatalf("ward scan --reported: %+v", scans)
	}
	ch := scans[0].Chain
	if ch == nil || !ch.Trusted || !strings.HasPrefix(ch.Bundle, "authority ") || ch.SPIFFEID == "" || ch.SPIFFEIDMatch == nil || !*ch.SPIFFEIDMatch {
		t.Fatalf("the reported listener's chain: %+v", ch)
	}
	// Named targets come first and are not scanned twice; without an
	// endpoint and without --reported there is nothing to scan.
	out, err = ward(t, addr, "scan", sc.Target, "--reported", "--json", "--fail-on", "never")
	if err != nil || strings.Count(out, `"target"`) != 1 || strings.Contains(out, `"source"`) {
		t.Fatalf("ward scan TARGET --reported: %v\n%s", err, out)
	}
	if out, err := ward(t, addr, "scan"); err == nil || !strings.Contains(out+err.Error(), "--reported") {
		t.Fatalf("ward scan with no target: %v\n%s", err, out)
	}
}

func proxyReported(nodes []telemetry.NodeReport, service string) bool {
	for _, n := range nodes {
		for _, p := range n.Processes {
			for _, l := range p.Listeners {
				if p.Kind == telemetry.KindProxy && l.Direction == "inbound" && l.Service == service && l.MTLS && l.MinTLS == "1.3" {
					return true
				}
			}
		}
	}
	return false
}

func metricsText(t *testing.T, srv *server.Server) string {
	t.Helper()
	resp, err := http.Get("http://" + srv.HTTPAddress() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
