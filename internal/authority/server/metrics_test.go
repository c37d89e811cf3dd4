package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/wardproject/ward/internal/shared/policy"
)

// TestAPIMetricsPerMethodAndCode: the interceptor resolves a method's
// series once and shares them between concurrent calls; every call is
// still counted under its service, method and code, and timed.
func TestAPIMetricsPerMethodAndCode(t *testing.T) {
	m := newMetrics(&Server{})
	intercept := m.unary()
	ok := func(context.Context, any) (any, error) { return "reply", nil }
	notFound := func(context.Context, any) (any, error) { return nil, status.Error(codes.NotFound, "no such key") }
	infos := []*grpc.UnaryServerInfo{{FullMethod: "/ward.v1.KMS/Encrypt"}, {FullMethod: "/ward.v1.Keys/ListKeys"}}
	const callers, calls = 32, 50
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			for j := range calls {
				h := ok
				if (i+j)%5 == 0 {
					h = notFound
				}
				if _, err := intercept(context.Background(), nil, infos[j%2], h); (err == nil) != ((i+j)%5 != 0) {
					t.Errorf("caller %d call %d: error %v", i, j, err)
				}
			}
		})
	}
	wg.Wait()
	count := func(svc, method, code string) float64 {
		var d dto.Metric
		if err := m.ops.WithLabelValues(svc, method, code).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetCounter().GetValue()
	}
	var okN, nfN float64
	for _, sm := range [][2]string{{"KMS", "Encrypt"}, {"Keys", "ListKeys"}} {
		okN += count(sm[0], sm[1], "OK")
		nfN += count(sm[0], sm[1], "NotFound")
		var d dto.Metric
		if err := m.latency.WithLabelValues(sm[0], sm[1]).(interface{ Write(*dto.Metric) error }).Write(&d); err != nil {
			t.Fatal(err)
		}
		if got := d.GetHistogram().GetSampleCount(); got != callers*calls/2 {
			t.Errorf("%s.%s: %d latency samples, want %d", sm[0], sm[1], got, callers*calls/2)
		}
	}
	if okN != callers*calls*4/5 || nfN != callers*calls/5 {
		t.Fatalf("counted %v OK and %v NotFound, want %d and %d", okN, nfN, callers*calls*4/5, callers*calls/5)
	}
}

// TestAPIMetricsUnknownMethodsNotKept runs the attack on the per-method
// series the interceptors keep forever: a local caller (any uid that can
// reach the admin socket, before any authorization) invokes many made-up
// method names. gRPC refuses them before the interceptors, so none of them
// gets a series (the map and the label sets stay bounded by the
// registered methods).
func TestAPIMetricsUnknownMethodsNotKept(t *testing.T) {
	srv, _ := startB(t, baseConfig(filepath.Join(t.TempDir(), "a")))
	conn, err := grpc.NewClient(srv.AdminAddress(), grpc.WithTransportCredentials(local.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 200 {
		for _, m := range []string{fmt.Sprintf("/attack.v1.S%d/M", i), fmt.Sprintf("/ward.v1.KMS/Encrypt%d", i)} {
			err := conn.Invoke(context.Background(), m, &emptypb.Empty{}, &emptypb.Empty{})
			if status.Code(err) != codes.Unimplemented {
				t.Fatalf("%s: %v, want Unimplemented", m, err)
			}
		}
	}
	srv.metrics.methods.Range(func(k, _ any) bool {
		if s := k.(string); strings.HasPrefix(s, "/attack.") || strings.Contains(s, "Encrypt1") {
			t.Errorf("a made-up method has series: %s", s)
		}
		return true
	})
}

// TestDecisionMetrics: decisions from concurrent calls are counted under
// their action and result (series resolved once per action); a result
// that never happened has no series (the dashboard lists every series).
func TestDecisionMetrics(t *testing.T) {
	m := newMetrics(&Server{})
	const callers, calls = 16, 40
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			for j := range calls {
				action := []string{"kms:encrypt", "kms:decrypt"}[(i+j)%2]
				d := policy.Decision{Allowed: j%4 != 0}
				if j%8 == 0 {
					d.DryRunDenials = []string{"p"}
				}
				m.decision(action, d, 0)
			}
		})
	}
	wg.Wait()
	got := map[string]float64{}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ward_policy_decisions_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			var a, r string
			for _, l := range s.GetLabel() {
				switch l.GetName() {
				case "action":
					a = l.GetValue()
				case "result":
					r = l.GetValue()
				}
			}
			got[a+" "+r] = s.GetCounter().GetValue()
		}
	}
	want := map[string]float64{}
	for i := range callers {
		for j := range calls {
			action := []string{"kms:encrypt", "kms:decrypt"}[(i+j)%2]
			if j%4 != 0 {
				want[action+" allow"]++
			} else {
				want[action+" deny"]++
			}
			if j%8 == 0 {
				want[action+" dry-run-deny"]++
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("decision series %v, want %v", got, want)
	}
	m2 := newMetrics(&Server{})
	m2.decision("kms:encrypt", policy.Decision{Allowed: true}, 0)
	mfs, _ = m2.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "ward_policy_decisions_total" && len(mf.GetMetric()) != 1 {
			t.Fatalf("one allowed decision made %d series", len(mf.GetMetric()))
		}
	}
}
