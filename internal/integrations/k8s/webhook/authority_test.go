package webhook

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// tableKeys is an authority's Keys service for the table read: it answers
// with the table, or fails as set.
type tableKeys struct {
	wardv1.UnimplementedKeysServer
	calls *atomic.Int64
	fail  func(ctx context.Context) error // nil: answer
}

func (k tableKeys) ListClassifications(ctx context.Context, _ *wardv1.ListClassificationsRequest) (*wardv1.ListClassificationsResponse, error) {
	k.calls.Add(1)
	if k.fail != nil {
		return nil, k.fail(ctx)
	}
	r := &wardv1.ListClassificationsResponse{}
	for _, n := range []string{"public", "internal", "confidential", "restricted"} {
		r.Classifications = append(r.Classifications, &wardv1.Classification{Name: n})
	}
	return r, nil
}

// serveKeys serves k on a fresh admin-like unix socket until the test ends
// and returns its address.
func serveKeys(t *testing.T, k tableKeys) string {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(local.NewCredentials()))
	wardv1.RegisterKeysServer(srv, k)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return "unix://" + ln.Addr().String()
}

// TestTableReadFailsOverWithinBudget (failure): with authority.address
// naming two authorities, the start-time read of the classification table
// succeeds through the second when the first is cut off from its store
// (answers Unavailable at once) or hung (takes the call, never answers):
// each attempt gets the budget shared among the authorities, so a silent
// first one leaves the time for the second. With the client's default
// attempt (the whole budget), the hung one took all of it and the start
// failed. The budget is 4 s here (10 s in production, TableTimeout).
func TestTableReadFailsOverWithinBudget(t *testing.T) {
	const budget = 4 * time.Second
	cfg := testConfig(t, "")
	hang := func(ctx context.Context) error { <-ctx.Done(); return status.Error(codes.Unavailable, "never") }
	cutOff := func(context.Context) error {
		return status.Error(codes.Unavailable, "this authority is cut off from its store (etcd lease lapsed): retry on another")
	}
	for _, c := range []struct {
		name string
		fail func(context.Context) error
	}{{"first cut off from its store", cutOff}, {"first hung", hang}} {
		t.Run(c.name, func(t *testing.T) {
			firstCalls, secondCalls := &atomic.Int64{}, &atomic.Int64{}
			addr := serveKeys(t, tableKeys{calls: firstCalls, fail: c.fail}) + "," + serveKeys(t, tableKeys{calls: secondCalls})
			if got, want := attemptTimeout(budget, addr), budget/2; got != want {
				t.Fatalf("attempt timeout %s, want %s", got, want)
			}
			cl, err := client.Dial(addr, client.WithAttemptTimeout(attemptTimeout(budget, addr)))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := cfg.checkAuthorityTable(context.Background(), cl, budget); err != nil {
				t.Fatalf("table read with the second authority up: %v", err)
			}
			if firstCalls.Load() == 0 || secondCalls.Load() == 0 {
				t.Fatalf("calls: first %d, second %d; want the first tried, then the second", firstCalls.Load(), secondCalls.Load())
			}
		})
	}
	t.Run("attempt of the whole budget: the hung one takes it all", func(t *testing.T) {
		addr := serveKeys(t, tableKeys{calls: &atomic.Int64{}, fail: hang}) + "," + serveKeys(t, tableKeys{calls: &atomic.Int64{}})
		cl, err := client.Dial(addr, client.WithAttemptTimeout(budget))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		err = cfg.checkAuthorityTable(context.Background(), cl, budget)
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "classification table") {
			t.Fatalf("table read with a per-attempt bound of the whole budget: %v, want DeadlineExceeded", err)
		}
	})
}

func TestAttemptTimeout(t *testing.T) {
	for addr, want := range map[string]time.Duration{
		"unix:///a/admin.sock":                                             TableTimeout / 2,
		"unix:///a/admin.sock,unix:///b/admin.sock":                        TableTimeout / 2,
		"unix:///a/admin.sock, unix:///b/admin.sock ,unix:///c/admin.sock": TableTimeout / 3,
	} {
		if got := (AuthorityConfig{Address: addr}).AttemptTimeout(); got != want {
			t.Errorf("AttemptTimeout(%q) = %s, want %s", addr, got, want)
		}
	}
}
