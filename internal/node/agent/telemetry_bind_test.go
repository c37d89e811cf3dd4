package agent

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// TestTelemetryIsBoundToTheCaller (red team): a workload on the policy
// socket cannot report under another live process's proxy name or
// listener address (false drift findings); every report carries the
// caller's attested pid/uid as its source, whatever it sent; once the
// holder is gone its name is free.
func TestTelemetryIsBoundToTheCaller(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "60")
	if err := holder.Start(); err != nil {
		t.Skipf("no sleep to stand for another process: %v", err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	srv := telemetryServer{a: a}
	report := func(pid int, r telemetry.Report) error {
		b, _ := json.Marshal(r)
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Caller: attest.Caller{PID: int32(pid), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}}})
		_, err := srv.Report(ctx, &wardv1.TelemetryReport{Report: b})
		return err
	}
	name := "spiffe://" + testTD.Name() + "/shop/api"
	honest := telemetry.Report{Kind: telemetry.KindProxy, Name: name,
		Listeners: []telemetry.Listener{{Name: "in", Address: "127.0.0.1:8443", Direction: "inbound", Service: "api", MTLS: true, MinTLS: "1.3"}}}
	if err := report(holder.Process.Pid, honest); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	forged := honest
	forged.Listeners = []telemetry.Listener{{Name: "in", Address: "127.0.0.1:8443", Direction: "inbound", Service: "api", MinTLS: "1.0"}}
	forged.Source = "pid 1 uid 0 spiffe://" + testTD.Name() + "/shop/api"
	if err := report(me, forged); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another process's proxy name: %v", err)
	}
	other := forged
	other.Name = "mine"
	if err := report(me, other); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another process's listener address: %v", err)
	}
	procs := a.nodeReport().Processes
	if len(procs) != 1 || procs[0].Listeners[0].MinTLS != "1.3" || !strings.HasPrefix(procs[0].Source, "pid "+strconv.Itoa(holder.Process.Pid)+" ") {
		t.Fatalf("after the forgeries the node reports %+v", procs)
	}
	holder.Process.Kill()
	holder.Wait()
	if err := report(me, forged); err != nil {
		t.Fatalf("the name of a process that is gone: %v", err)
	}
	procs = a.nodeReport().Processes
	if len(procs) != 1 || procs[0].Source != "pid "+strconv.Itoa(me)+" uid "+strconv.Itoa(os.Getuid()) {
		t.Fatalf("the source is not the attested caller: %+v", procs)
	}
}

// TestTelemetryRefusesAnotherSPIFFEID (red team): a caller with entries
// cannot report a listener presenting, or a proxy named, a SPIFFE ID that
// is not one of its own identities (another workload's: its drift findings
// would be forged); its own identity is taken.
func TestTelemetryRefusesAnotherSPIFFEID(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	auth.addEntry("/shop/api", uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)
	me := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	own := "spiffe://" + testTD.Name() + "/shop/api"
	waitFor(t, "the caller's entry synced", func() bool {
		sel, err := r.att.Attest(context.Background(), me)
		return err == nil && len(r.Identities(attest.Normalize(sel))) > 0
	})
	srv := telemetryServer{a: r.Agent}
	report := func(rep telemetry.Report) error {
		b, _ := json.Marshal(rep)
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Caller: me}})
		_, err := srv.Report(ctx, &wardv1.TelemetryReport{Report: b})
		return err
	}
	other := "spiffe://" + testTD.Name() + "/payments/db"
	listener := func(id string) []telemetry.Listener {
		return []telemetry.Listener{{Name: "in", Address: "127.0.0.1:9443", Direction: "inbound", Service: "api", SPIFFEID: id, MTLS: true, MinTLS: "1.3"}}
	}
	if err := report(telemetry.Report{Kind: telemetry.KindProxy, Name: "edge", Listeners: listener(other)}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), other) {
		t.Fatalf("a listener presenting another workload's SPIFFE ID: %v, want PermissionDenied naming it", err)
	}
	if err := report(telemetry.Report{Kind: telemetry.KindProxy, Name: other, Listeners: listener("")}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), other) {
		t.Fatalf("a proxy named another workload's SPIFFE ID: %v, want PermissionDenied naming it", err)
	}
	if procs := r.nodeReport().Processes; len(procs) != 0 {
		t.Fatalf("refused reports were kept: %+v", procs)
	}
	if err := report(telemetry.Report{Kind: telemetry.KindProxy, Name: own, Listeners: listener(own)}); err != nil {
		t.Fatalf("the caller's own identity: %v", err)
	}
	if procs := r.nodeReport().Processes; len(procs) != 1 || !strings.Contains(procs[0].Source, own) {
		t.Fatalf("the honest report: %+v", procs)
	}
}
