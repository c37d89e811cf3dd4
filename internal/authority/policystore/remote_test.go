package policystore

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/policy"
)

// Remote deny-lists ride along every new version; RefreshRemote publishes
// a change (and only a change); Revoke refuses another trust domain's IDs.
func TestRemoteDenyListsAndOwnTrustDomainRevocation(t *testing.T) {
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var mu sync.Mutex
	remote := map[string]policy.DenyList{}
	get := func() map[string]policy.DenyList {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]policy.DenyList{}
		for k, v := range remote {
			out[k] = v
		}
		return out
	}
	ps := New(st, &auditLog{}, WithRemoteDenyLists(get), WithTrustDomain("td"))
	if n, err := ps.RefreshRemote(ctx, "system", nil); n != 0 || err != nil {
		t.Fatalf("refresh with no policy: %d %v", n, err)
	}
	mu.Lock()
	remote["a.example"] = policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x"}}
	mu.Unlock()
	v1, err := ps.Apply(ctx, "admin", map[string][]byte{"a.cedar": []byte(`permit(principal, action, resource);`)}, "")
	if err != nil || len(v1.Bundle.RemoteDenyLists["a.example"].SPIFFEIDs) != 1 {
		t.Fatalf("first version lacks the remote list received before it: %+v %v", v1.Bundle, err)
	}
	if n, err := ps.RefreshRemote(ctx, "system", nil); n != 0 || err != nil {
		t.Fatalf("refresh without a change: %d %v", n, err)
	}
	mu.Lock()
	remote["a.example"] = policy.DenyList{SPIFFEIDs: []string{"spiffe://a.example/x", "spiffe://a.example/y"}}
	mu.Unlock()
	n, err := ps.RefreshRemote(ctx, "system", map[string]string{"trust_domain": "a.example"})
	if err != nil || n != 2 {
		t.Fatalf("refresh after a change: %d %v", n, err)
	}
	set, err := ps.Compile(mustGet(t, ps, n).Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if d := set.Decide(req("spiffe://a.example/y")); d.Allowed {
		t.Fatalf("remote revocation not enforced: %+v", d)
	}
	_, err = ps.Revoke(ctx, "admin", []string{"spiffe://a.example/z"}, nil, false, "")
	if err == nil || !strings.Contains(err.Error(), "can only revoke its own identities") {
		t.Fatalf("revoking another trust domain's ID: %v", err)
	}
	v3, err := ps.Revoke(ctx, "admin", []string{"spiffe://td/a"}, nil, false, "")
	if err != nil || len(v3.Bundle.RemoteDenyLists["a.example"].SPIFFEIDs) != 2 {
		t.Fatalf("own revoke dropped the remote list: %+v %v", v3.Bundle, err)
	}
}

func mustGet(t *testing.T, ps *Store, n uint64) Version {
	t.Helper()
	v, err := ps.Get(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
