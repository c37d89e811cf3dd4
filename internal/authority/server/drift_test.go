package server

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/shared/posture"
)

// keyEvaluator finds every key of a classification the posture rotates
// (a stand-in for internal/governance/drift, which the authority never
// imports).
func keyEvaluator(r posture.Rules, st posture.State) []posture.Finding {
	var out []posture.Finding
	for _, k := range st.Keys {
		if _, ok := r.Rotation[k.Classification]; ok {
			out = append(out, posture.Finding{Object: "key/" + k.Name, Rule: "rotation.period", Severity: posture.High, Evidence: "e", Fix: "f", Source: posture.SourceState})
		}
	}
	return out
}

func countOps(t *testing.T, srv *Server, op string) int {
	n := 0
	for _, ev := range allEvents(t, srv) {
		if ev.Operation == op {
			n++
		}
	}
	return n
}

// The posture is versioned and audited; a bad file changes nothing; drift
// findings are kept (Drift), and audited when they appear and resolve, not
// on every evaluation.
func TestPostureAndDriftFindings(t *testing.T) {
	cfg := baseConfig(t.TempDir())
	ctx := context.Background()
	srv, c := startWith(t, cfg, func(s *Server) { s.SetDriftEvaluator(keyEvaluator, time.Hour) })
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Posture.GetPosture(ctx, &wardv1.GetPostureRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("no posture yet: %v", err)
	}
	_, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: []byte("defaults: {rotation: {nosuch: {period: 30d}}}")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "defaults.rotation.nosuch") {
		t.Fatalf("bad posture: %v", err)
	}
	if l, err := c.Posture.ListPostureVersions(ctx, &wardv1.ListPostureVersionsRequest{}); err != nil || len(l.Versions) != 0 {
		t.Fatalf("a bad file was stored: %v %v", l, err)
	}
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "k1", Classification: "confidential"}); err != nil {
		t.Fatal(err)
	}
	v, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: []byte("defaults: {rotation: {confidential: {period: 30d}}}"), Comment: "first"})
	if err != nil || v.Number != 1 || !v.Current {
		t.Fatalf("set: %v %v", v, err)
	}
	if countOps(t, srv, "posture.set") != 3 {
		t.Fatal("posture.set not audited (the refused one, then started and stored)")
	}
	rep, err := srv.EvaluateDrift(ctx)
	if err != nil || len(rep.Findings) != 1 || rep.PostureVersion != 1 || rep.Findings[0].Object != "key/k1" {
		t.Fatalf("evaluate: %+v %v", rep, err)
	}
	if got, ok := srv.Drift(); !ok || len(got.Findings) != 1 {
		t.Fatalf("Drift() = %+v %v", got, ok)
	}
	for i := 0; i < 3; i++ {
		if _, err := srv.EvaluateDrift(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := countOps(t, srv, "drift.finding"); n != 1 {
		t.Fatalf("%d drift.finding events for one finding seen 4 times: want 1", n)
	}
	// The API evaluates and returns the state it used.
	d, err := c.Posture.GetDrift(ctx, &wardv1.GetDriftRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var st posture.State
	if err := json.Unmarshal(d.State, &st); err != nil || len(st.Keys) != 1 || st.Keys[0].Name != "k1" {
		t.Fatalf("state: %s %v", d.State, err)
	}
	// Fixing the posture resolves the finding: one drift.resolved.
	if _, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: []byte("defaults: {rotation: {public: {period: 30d}}}")}); err != nil {
		t.Fatal(err)
	}
	if rep, err = srv.EvaluateDrift(ctx); err != nil || len(rep.Findings) != 0 || rep.PostureVersion != 2 {
		t.Fatalf("after fix: %+v %v", rep, err)
	}
	if countOps(t, srv, "drift.resolved") != 1 {
		t.Fatal("resolution not audited once")
	}
	h, err := c.Posture.ListPostureVersions(ctx, &wardv1.ListPostureVersionsRequest{})
	if err != nil || len(h.Versions) != 2 || h.Current != 2 || h.Versions[0].Comment != "first" {
		t.Fatalf("history: %v %v", h, err)
	}
	old, err := c.Posture.GetPosture(ctx, &wardv1.GetPostureRequest{Version: 1})
	if err != nil || old.Current || !strings.Contains(string(old.File), "confidential") {
		t.Fatalf("version 1: %v %v", old, err)
	}
}

// A node silent for telemetryForget is forgotten; a report naming another
// node than its sender is refused and stores nothing.
func TestTelemetryStore(t *testing.T) {
	srv := &Server{drift: newDriftState(), metrics: newMetrics(&Server{})}
	now := time.Now()
	srv.drift.now = func() time.Time { return now }
	good := []byte(`{"agent":{"kind":"agent","fips":true}}`)
	if err := srv.ReportTelemetry("spiffe://td/ward/agent/a", good); err != nil {
		t.Fatal(err)
	}
	if err := srv.ReportTelemetry("spiffe://td/ward/agent/b", []byte(`{"node":"spiffe://td/ward/agent/a","agent":{"kind":"agent"}}`)); err == nil || !isOtherNodeErr(err) {
		t.Fatalf("a report for another node: %v", err)
	}
	if err := srv.ReportTelemetry("spiffe://td/ward/agent/b", []byte(`{"agent":{"kind":"agent"},"x":1}`)); err == nil {
		t.Fatal("an unknown field was accepted")
	}
	if got := srv.Telemetry(); len(got) != 1 || got[0].Node != "spiffe://td/ward/agent/a" || !got[0].Agent.FIPS || !got[0].Received.Equal(now.UTC()) {
		t.Fatalf("telemetry: %+v", got)
	}
	now = now.Add(telemetryForget + time.Minute)
	if got := srv.Telemetry(); len(got) != 0 {
		t.Fatalf("a node silent for %v is still held: %+v", telemetryForget, got)
	}
}

func isOtherNodeErr(err error) bool {
	_, ok := err.(nodeapi.ErrOtherNode)
	return ok
}
