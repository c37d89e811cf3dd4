package gateway

import (
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/catalog"
)

func TestCatalogConfigAndRoutes(t *testing.T) {
	base := "listen: 127.0.0.1:1\ntrust_domain: b.example\n"
	c, err := ParseConfig([]byte(base + "catalog_socket: unix:///run/ward/policy.sock\ncatalog_proxy_protocol: v2\n"))
	if err != nil || c.CatalogProxyProtocol != ProxyProtocolV2 {
		t.Fatalf("%v %+v", err, c)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"catalog_socket: unix:///p.sock\nroutes: [{service: api, forward: 127.0.0.1:2}]\n", "exclude each other"},
		{"catalog_socket: /p.sock\n", "unix:///path"},
		{"catalog_socket: unix:///p.sock\ncatalog_proxy_protocol: v1\n", "catalog_proxy_protocol"},
		{"", "no routes"},
	} {
		if _, err := ParseConfig([]byte(base + tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	routes, skipped := catalogRoutes([]catalog.Service{
		{Name: "pay", SPIFFEID: "spiffe://b.example/pay", Gateway: "gw:1", Forward: "127.0.0.1:8443"},
		{Name: "api", SPIFFEID: "spiffe://b.example/api", Gateway: "gw:1", Forward: "unix:///run/api.sock"},
		{Name: "noforward", SPIFFEID: "spiffe://b.example/x", Gateway: "gw:1"},
	}, "b.example", ProxyProtocolNone)
	if len(routes) != 2 || routes[0].SNI() != "api.b.example.ward" || routes[1].Forward != "127.0.0.1:8443" || len(skipped) != 1 {
		t.Fatalf("routes %+v skipped %v", routes, skipped)
	}
}
