package policystore

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/catalog"
)

func TestServicesCatalogInVersions(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var mu sync.Mutex
	svcs := map[string][]catalog.Service{}
	get := func() map[string][]catalog.Service {
		mu.Lock()
		defer mu.Unlock()
		out := map[string][]catalog.Service{}
		for k, v := range svcs {
			out[k] = v
		}
		return out
	}
	set := func(td string, s ...catalog.Service) {
		mu.Lock()
		defer mu.Unlock()
		svcs[td] = s
	}
	aud := &auditLog{}
	ps := New(st, aud, WithServices(get), WithTrustDomain("a.example"))
	if n, err := ps.RefreshServices(ctx, "system", nil); n != 0 || err != nil {
		t.Fatalf("refresh with no policy: %d %v", n, err)
	}
	set("a.example", catalog.Service{Name: "api", SPIFFEID: "spiffe://a.example/api", Gateway: "gw:1", Forward: "127.0.0.1:2"})
	v1, err := ps.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(`permit(principal, action, resource);`)}, "")
	if err != nil || len(v1.Bundle.Services["a.example"]) != 1 {
		t.Fatalf("the first version lacks the catalog: %+v %v", v1.Bundle, err)
	}
	if n, err := ps.RefreshServices(ctx, "system", nil); n != 0 || err != nil {
		t.Fatalf("refresh without a change: %d %v", n, err)
	}
	set("b.example", catalog.Service{Name: "pay", SPIFFEID: "spiffe://b.example/pay", Gateway: "gw.b:1"})
	n, err := ps.RefreshServices(ctx, "system:federation/b.example", map[string]string{"trust_domain": "b.example"})
	if err != nil || n != v1.Number+1 {
		t.Fatalf("refresh: %d %v", n, err)
	}
	v2, err := ps.Get(ctx, n)
	if err != nil || len(v2.Bundle.Services) != 2 || string(v2.Bundle.Files["a.cedar"]) == "" {
		t.Fatalf("v2: %+v %v", v2.Bundle, err)
	}
	// A catalog that does not compile (b.example naming c.example's
	// identity) stores nothing.
	set("b.example", catalog.Service{Name: "pay", SPIFFEID: "spiffe://c.example/pay", Gateway: "gw.b:1"})
	if n, err := ps.RefreshServices(ctx, "system", nil); err == nil {
		t.Fatalf("stored a version with a foreign identity in b.example's section: %d", n)
	}
	if cur, _ := ps.Current(ctx); cur != v2.Number {
		t.Fatalf("current %d, want %d", cur, v2.Number)
	}
}
