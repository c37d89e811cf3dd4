package server

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

func etcdAuthorities(t *testing.T, names ...string) ([]*Server, []*client.Client) {
	t.Helper()
	return etcdAuthoritiesWith(t, nil, names...)
}

// etcdAuthoritiesWith is etcdAuthorities with edit applied to each
// authority's configuration.
func etcdAuthoritiesWith(t *testing.T, edit func(*config.Server), names ...string) ([]*Server, []*client.Client) {
	t.Helper()
	etcd := etcdtest.Start(t)
	root := t.TempDir()
	var srvs []*Server
	var cs []*client.Client
	for i, name := range names {
		c := baseConfig(filepath.Join(root, name))
		c.Storage.Backend = "etcd"
		c.Storage.Etcd = config.Etcd{Endpoints: etcd.Endpoints(), Prefix: "/ward/ha/", DialTimeout: yamlconf.Duration(5 * time.Second),
			LeaseTTL: yamlconf.Duration(2 * time.Second), MemberName: name}
		if edit != nil {
			edit(c)
		}
		s, cl := start(t, c)
		if i == 0 {
			if _, err := cl.Operator.Init(context.Background(), &wardv1.InitRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		srvs, cs = append(srvs, s), append(cs, cl)
	}
	return srvs, cs
}

// The attack/race: the same idempotency key sent to two authorities at
// once (a client that timed out on one and retried on the other, or a
// replayed request) rotates the key once; both callers get the same
// answer once the first call finished. A key reused for another request
// is refused.
func TestSameRequestIDOnTwoAuthoritiesRotatesOnce(t *testing.T) {
	_, cs := etcdAuthorities(t, "a", "b")
	ctx := context.Background()
	if _, err := cs[0].Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "app/k", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	const rounds = 10
	for r := range rounds {
		key := fmt.Sprintf("round-%d-%s", r, reqctx.NewRequestID()[:8])
		var wg sync.WaitGroup
		versions := make([]uint32, 2)
		errs := make([]error, 2)
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mctx := metadata.AppendToOutgoingContext(ctx, reqctx.IdempotencyHeader, key)
				for {
					resp, err := c.Keys.RotateKey(mctx, &wardv1.RotateKeyRequest{Name: "app/k"})
					if status.Code(err) == codes.Aborted { // still running on the other authority
						time.Sleep(10 * time.Millisecond)
						continue
					}
					if err == nil {
						versions[i] = resp.GetLatestVersion()
					}
					errs[i] = err
					return
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, authority %d: %v", r, i, err)
			}
		}
		want := uint32(r + 2)
		if versions[0] != want || versions[1] != want {
			t.Fatalf("round %d: answers name versions %v, want both %d (one rotation)", r, versions, want)
		}
	}
	k, err := cs[1].Keys.GetKey(ctx, &wardv1.GetKeyRequest{Name: "app/k"})
	if err != nil {
		t.Fatal(err)
	}
	if got := k.GetLatestVersion(); got != rounds+1 {
		t.Fatalf("after %d requests sent twice each the key has version %d, want %d", rounds, got, rounds+1)
	}
	// The same key for another request (another key name) is refused.
	mctx := metadata.AppendToOutgoingContext(ctx, reqctx.IdempotencyHeader, "reused-key")
	if _, err := cs[0].Keys.RotateKey(mctx, &wardv1.RotateKeyRequest{Name: "app/k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs[0].Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "app/other", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	_, err = cs[1].Keys.RotateKey(mctx, &wardv1.RotateKeyRequest{Name: "app/other"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("idempotency key reused for another request: %v, want InvalidArgument", err)
	}
}

// Exactly one of three authorities leads; operator status names it and
// every member; when it stops another takes over.
func TestClusterStatusAndTakeover(t *testing.T) {
	srvs, cs := etcdAuthorities(t, "a", "b", "c")
	ctx := context.Background()
	leader := func(live []*Server) int {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			n, idx := 0, -1
			for i, s := range srvs {
				if live[i] != nil && s.IsLeader() {
					n, idx = n+1, i
				}
			}
			if n > 1 {
				t.Fatalf("%d authorities lead at once", n)
			}
			if n == 1 {
				return idx
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("no leader elected")
		return -1
	}
	live := append([]*Server(nil), srvs...)
	l := leader(live)
	var st *wardv1.ClusterStatusResponse
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if st, err = cs[(l+1)%3].Cluster.Status(ctx, &wardv1.ClusterStatusRequest{}); err != nil {
			t.Fatal(err)
		}
		if len(st.Members) == 3 && st.GetLeader().GetName() != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	names := []string{"a", "b", "c"}
	if st.Mode != "etcd" || st.GetLeader().GetName() != names[l] || len(st.Members) != 3 || st.IsLeader || st.LeaseTtlSeconds != 2 {
		t.Fatalf("status from a follower: %v", st)
	}
	srvs[l].Stop()
	live[l] = nil
	l2 := leader(live)
	if l2 == l {
		t.Fatal("the stopped authority still leads")
	}
}

// The leader's followers of the audit log (the anomaly detector's feed)
// see the events every authority appends, not only its own.
func TestFollowAuditSeesEveryAuthority(t *testing.T) {
	srvs, cs := etcdAuthorities(t, "a", "b")
	if !srvs[0].Clustered() {
		t.Fatal("an authority on etcd must say it is clustered")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := make(chan string, 100)
	go srvs[0].FollowAudit(ctx, func(ev audit.Event) {
		if ev.Operation == "key.create" {
			seen <- ev.Key
		}
	})
	time.Sleep(200 * time.Millisecond) // FollowAudit starts at the current size
	if _, err := cs[1].Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "from/b", Classification: "internal"}); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-seen:
		if k != "from/b" {
			t.Fatalf("followed key.create of %q", k)
		}
	case <-ctx.Done():
		t.Fatal("A's follower never saw B's key.create")
	}
}

// Idempotency keys are scoped to the caller: another caller (another
// local uid on the admin socket) who learns or guesses a key neither gets
// the first caller's answer (a join token, say) nor blocks its request;
// the same caller's retry gets the stored answer without running again.
func TestIdempotencyKeyIsScopedToTheCaller(t *testing.T) {
	srvs, _ := etcdAuthorities(t, "a")
	s := srvs[0]
	runs := 0
	h := func(ctx context.Context, req any) (any, error) {
		runs++
		return &wardv1.Key{Name: reqctx.From(ctx).Actor, LatestVersion: uint32(runs)}, nil
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/ward.v1.Keys/RotateKey"}
	call := func(actor string) *wardv1.Key {
		t.Helper()
		ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: actor, RequestID: "r", IdempotencyKey: "shared-key"})
		resp, err := s.dedupUnary(ctx, &wardv1.RotateKeyRequest{Name: "k"}, info, h)
		if err != nil {
			t.Fatal(err)
		}
		return resp.(*wardv1.Key)
	}
	first := call("admin:uid=1000")
	if again := call("admin:uid=1000"); runs != 1 || again.Name != first.Name || again.LatestVersion != first.LatestVersion {
		t.Fatalf("a retry of the same caller ran again (%d runs) or got another answer: %v vs %v", runs, again, first)
	}
	other := call("admin:uid=1001")
	if runs != 2 || other.Name != "admin:uid=1001" {
		t.Fatalf("another caller with the same key got the first caller's answer: %v (%d runs)", other, runs)
	}
}
