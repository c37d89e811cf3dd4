package policy

import (
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/catalog"
)

func TestBundleServices(t *testing.T) {
	files := map[string][]byte{"p.cedar": []byte(`permit(principal, action, resource);`)}
	b := Bundle{Version: 3, Files: files, Services: map[string][]catalog.Service{
		"b.example": {{Name: "payments", SPIFFEID: "spiffe://b.example/pay", Gateway: "gw.b.example:15443"}},
		"a.example": {{Name: "api", SPIFFEID: "spiffe://a.example/api", Gateway: "gw.a.example:15443", Forward: "127.0.0.1:8443"}},
	}}
	raw, err := MarshalBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	set, err := CompileBundle(parsed)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := set.Service(catalog.Ref{Name: "payments", TrustDomain: "b.example"})
	if !ok || s.SPIFFEID != "spiffe://b.example/pay" || len(set.Services("a.example")) != 1 || len(set.AllServices()) != 2 {
		t.Fatalf("services: %+v", set.AllServices())
	}
	if _, ok := set.Service(catalog.Ref{Name: "payments", TrustDomain: "c.example"}); ok {
		t.Fatal("a service found in a trust domain that does not export it")
	}
	// A section naming another trust domain's identity invalidates the
	// whole version: b.example cannot publish c.example's services.
	b.Services["b.example"] = append(b.Services["b.example"], catalog.Service{Name: "db", SPIFFEID: "spiffe://c.example/db", Gateway: "gw:1"})
	if _, err := CompileBundle(b); err == nil || !strings.Contains(err.Error(), "c.example") {
		t.Fatalf("compiled: %v", err)
	}
	// No section, no services.
	set, err = CompileBundle(Bundle{Files: files})
	if err != nil || set.AllServices() != nil {
		t.Fatalf("%v %+v", err, set.AllServices())
	}
}
