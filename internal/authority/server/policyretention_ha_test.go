package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
)

// TestPolicyRetentionHA: two authorities over one etcd, both with
// policy.keep_versions 3, applying at once: every version is numbered
// once, both list the same unbroken history of the current version and
// the 3 before it, the applies' audit events account for every pruned
// version, and a rollback to a pruned version is refused through either,
// naming the oldest version kept, with nothing changed.
func TestPolicyRetentionHA(t *testing.T) {
	if testing.Short() {
		t.Skip("etcd")
	}
	srvs, cs := etcdAuthoritiesWith(t, func(c *config.Server) { c.Policy.KeepVersions = 3 }, "a", "b")
	ctx := context.Background()
	const each = 8
	var wg sync.WaitGroup
	for w, c := range cs {
		wg.Add(1)
		go func(c *client.Client) {
			defer wg.Done()
			for i := range each {
				p := fmt.Sprintf("@id(\"w%d-%d\")\npermit (principal in TrustDomain::\"test.example.org\", action == Action::\"connect\", resource == Service::\"api\");\n", w, i)
				if _, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(p)}}); err != nil {
					t.Error(err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, c := range cs {
		r, err := c.Policy.ListPolicyVersions(ctx, &wardv1.ListPolicyVersionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for _, v := range r.Versions {
			got = append(got, v.Version)
		}
		if fmt.Sprint(got) != "[13 14 15 16]" || !r.Versions[3].Current {
			t.Fatalf("authority %d lists %v", i, got)
		}
	}
	pruned := 0
	// one audit log for both (it lives in the shared store)
	for _, ev := range allEvents(t, srvs[1]) {
		if ev.Operation == "policy.apply" && ev.Result == audit.ResultOK {
			var n int
			fmt.Sscan(ev.Fields["pruned_versions"], &n)
			pruned += n
		}
	}
	if pruned != 12 {
		t.Fatalf("the apply events account for %d pruned versions, want 12", pruned)
	}
	for _, c := range cs {
		_, err := c.Policy.RollbackPolicy(ctx, &wardv1.RollbackPolicyRequest{Version: 5})
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "oldest version still kept is 13") {
			t.Fatalf("rollback to a pruned version: %v", err)
		}
	}
	if r, err := cs[1].Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{}); err != nil || r.Version != 16 {
		t.Fatalf("a refused rollback changed the current version: %v %v", r, err)
	}
}
