package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/telemetry"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// A local proxy's report reaches the authority inside its node's report;
// the local API refuses oversize reports, reports posing as the agent, a
// flood from one process and more processes per uid than the bound.
func TestTelemetryRelay(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cfg.JoinToken = auth.joinToken()
	cfg.PolicySocket = filepath.Join(dir, "policy.sock")
	cfg.PolicySocketAllowedUIDs = []uint32{uint32(os.Getuid())}
	cfg.TelemetryInterval = yamlconf.Duration(time.Second)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's clock stands still: "one report per second per process"
	// and "silent for three intervals" are then decided by the test, not
	// by how long a loaded CI machine takes between two calls (a pause of
	// a second made the second report pass, of three dropped the proxy's).
	a.now = clock.At(time.Now()).Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "the policy socket", func() bool { _, err := os.Stat(cfg.PolicySocket); return err == nil })

	conn, err := grpc.NewClient("unix://"+cfg.PolicySocket, grpc.WithTransportCredentials(local.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := wardv1.NewTelemetryClient(conn)
	send := func(r telemetry.Report) error {
		b, _ := json.Marshal(r)
		_, err := tc.Report(ctx, &wardv1.TelemetryReport{Report: b})
		return err
	}
	proxy := telemetry.Report{Kind: telemetry.KindProxy, Name: "spiffe://" + testTD.Name() + "/shop/api",
		Listeners:   []telemetry.Listener{{Name: "in", Address: "127.0.0.1:8443", Direction: "inbound", Service: "api", MTLS: true, MinTLS: "1.3"}},
		TLSVersions: map[string]uint64{"1.3": 2}}
	if err := send(proxy); err != nil {
		t.Fatal(err)
	}
	if err := send(proxy); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second report within a second: %v", err)
	}
	if err := send(telemetry.Report{Kind: telemetry.KindAgent}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a report posing as the agent: %v", err)
	}
	_, err = tc.Report(ctx, &wardv1.TelemetryReport{Report: []byte(`{"kind":"proxy","name":"` + strings.Repeat("x", telemetry.MaxReportBytes) + `"}`)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("oversize: %v", err)
	}
	for i := 1; i < maxProcsPerUID; i++ {
		if err := send(telemetry.Report{Kind: telemetry.KindGateway, Name: fmt.Sprint("g", i)}); err != nil {
			t.Fatalf("process %d of the uid: %v", i, err)
		}
	}
	if err := send(telemetry.Report{Kind: telemetry.KindGateway, Name: "one-too-many"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("process %d of one uid: %v", maxProcsPerUID+1, err)
	}
	var got telemetry.NodeReport
	waitFor(t, "the node's report with the proxy at the authority", func() bool {
		auth.mu.Lock()
		defer auth.mu.Unlock()
		for _, b := range auth.telemetry {
			r, err := telemetry.DecodeNodeReport(b)
			if err == nil && len(r.Processes) == maxProcsPerUID {
				got = r
				return true
			}
		}
		return false
	})
	if got.Agent.Kind != telemetry.KindAgent || len(got.Agent.SVIDs) == 0 || got.Agent.SVIDs[0].ExpiresAt.IsZero() {
		t.Fatalf("the agent's own report: %+v", got.Agent)
	}
	found := false
	for _, p := range got.Processes {
		if p.Kind == telemetry.KindProxy && p.Listeners[0].Service == "api" && p.TLSVersions["1.3"] == 2 {
			found = true
		}
	}
	if !found {
		t.Fatalf("the proxy's report is not in the node's: %+v", got.Processes)
	}
}
