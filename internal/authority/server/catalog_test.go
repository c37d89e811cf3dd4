package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/shared/policy"
)

// TestServicesFromConfig: services.export is applied at unseal (source
// config, not changed through the API), every policy version carries the
// catalog, and a service removed from the config leaves it at the next
// start; a restart with nothing changed writes no policy version.
func TestServicesFromConfig(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "b")
	cfg := baseConfig(dir)
	cfg.TrustDomain = "b.example"
	cfg.Services = config.Services{Gateway: "gw.b.example:15443",
		Export: []config.ExportedService{{Name: "api", Port: 8443, SPIFFEID: "spiffe://b.example/api"}}}
	srv, c := startB(t, cfg)
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	b := &fedAuthority{cfg: cfg, raw: srv.raw, srv: srv, c: c}
	l, err := c.Catalog.ListServices(ctx, &wardv1.ListServicesRequest{})
	if err != nil || len(l.Services) != 1 || l.Services[0].Source != "config" || l.Services[0].Forward != "127.0.0.1:8443" || l.Services[0].Gateway != "gw.b.example:15443" {
		t.Fatalf("services: %v %v", l, err)
	}
	if _, err := c.Catalog.UnexportService(ctx, &wardv1.UnexportServiceRequest{Name: "api"}); code(err) != codes.FailedPrecondition {
		t.Fatalf("unexporting a config service through the API: %v", err)
	}
	if _, err := c.Catalog.ExportService(ctx, &wardv1.ExportServiceRequest{Name: "pay", Port: 9443, SpiffeId: "spiffe://c.example/pay"}); code(err) != codes.InvalidArgument {
		t.Fatalf("exporting another trust domain's identity: %v", err)
	}
	if _, err := c.Catalog.ExportService(ctx, &wardv1.ExportServiceRequest{Name: "pay", Port: 9443, SpiffeId: "spiffe://b.example/pay"}); err != nil {
		t.Fatal(err)
	}
	v, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(`permit(principal, action, resource);`)}})
	if err != nil {
		t.Fatal(err)
	}
	bundle := func() policy.Bundle {
		t.Helper()
		p, err := b.c.Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		pb, err := policy.ParseBundle(p.BundleJson)
		if err != nil {
			t.Fatal(err)
		}
		return pb
	}
	if got := bundle().Services["b.example"]; len(got) != 2 || got[0].Name != "api" || got[1].Name != "pay" {
		t.Fatalf("the policy version's catalog: %+v", got)
	}
	b.restart(t)
	if cur := bundle().Version; cur != v.Version {
		t.Fatalf("a restart with nothing changed made policy version %d (was %d)", cur, v.Version)
	}
	b.restart(t, func(cfg *config.Server) { cfg.Services.Export = nil })
	got := bundle().Services["b.example"]
	if len(got) != 1 || got[0].Name != "pay" {
		t.Fatalf("after api left the config: %+v", got)
	}
	if l, err := b.c.Catalog.ListServices(ctx, &wardv1.ListServicesRequest{}); err != nil || len(l.Services) != 1 || !strings.Contains(l.Services[0].Name, "pay") {
		t.Fatalf("services: %v %v", l, err)
	}
}
