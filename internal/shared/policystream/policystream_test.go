package policystream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/policy"
)

func version(t *testing.T, n uint64, text string) *wardv1.PolicyVersion {
	t.Helper()
	b, err := policy.MarshalBundle(policy.Bundle{Version: n, Files: map[string][]byte{"p.cedar": []byte(text)}})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return &wardv1.PolicyVersion{Version: n, BundleJson: b, Digest: hex.EncodeToString(sum[:])}
}

// serve runs r on a fresh unix socket (loopback only) and returns a client
// connection to it and a stop function.
func serve(t *testing.T, r *Relay) (*grpc.ClientConn, func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	wardv1.RegisterPolicyDistributionServer(g, r)
	go g.Serve(ln)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); g.Stop() })
	return conn, g.Stop
}

const allow = `permit(principal == Workload::"spiffe://td/a", action == Action::"connect", resource == Service::"b");`
const forbid = `forbid(principal, action, resource);`

func req() policy.Request {
	return policy.Request{Principal: "spiffe://td/a", Action: policy.ActionConnect, Resource: policy.Resource{Type: policy.TypeService, Name: "b"}}
}

func TestChainAuthorityAgentProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	upstream := NewRelay() // stands for the authority's stream
	upConn, _ := serve(t, upstream)
	agentRelay := NewRelay()
	agentConn, _ := serve(t, agentRelay)

	agentSrc := NewSource(upConn, nil)
	go agentSrc.RunVersions(ctx, func(v *wardv1.PolicyVersion, _ *policy.Set) { agentRelay.Publish(v) })
	engine := policy.NewEngine()
	proxySrc := NewSource(agentConn, nil)
	got := make(chan uint64, 16)
	go proxySrc.Run(ctx, func(s *policy.Set) { engine.StoreIfNewer(s); got <- s.Version() })

	wait := func(want uint64) {
		t.Helper()
		for {
			select {
			case v := <-got:
				if v == want {
					return
				}
				if v > want {
					t.Fatalf("got version %d, want %d", v, want)
				}
			case <-ctx.Done():
				t.Fatalf("version %d never arrived", want)
			}
		}
	}
	if d := engine.Decide(req()); d.Allowed || d.Cause != policy.CauseNoPolicy {
		t.Fatalf("before any version: %+v", d)
	}
	upstream.Publish(version(t, 1, allow))
	wait(1)
	if !engine.Decide(req()).Allowed {
		t.Fatal("version 1 should allow")
	}
	// A corrupted version (digest mismatch) and one that does not compile
	// are never handed on. The relay serves only the newest version, so
	// publish each alone and wait until the agent's source has seen it.
	waitErr := func(sub string) {
		t.Helper()
		for !strings.Contains(agentSrc.Status().LastError, sub) {
			if ctx.Err() != nil {
				t.Fatalf("agent source never reported %q: %+v", sub, agentSrc.Status())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	bad := version(t, 2, forbid)
	bad.Digest = "00"
	upstream.Publish(bad)
	waitErr("digest mismatch")
	upstream.Publish(version(t, 3, "permit(principal,"))
	waitErr("does not compile")
	if !engine.Decide(req()).Allowed || agentRelay.Latest().Version != 1 {
		t.Fatal("a rejected version reached the proxy")
	}
	upstream.Publish(version(t, 4, forbid))
	wait(4)
	if engine.Decide(req()).Allowed {
		t.Fatal("version 4 should deny")
	}
	// An older version is ignored by the relay.
	if agentRelay.Publish(version(t, 2, allow)) {
		t.Fatal("relay accepted an older version")
	}
}

func TestSourceReconnects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := NewRelay()
	sock := filepath.Join(t.TempDir(), "p.sock")
	start := func() *grpc.Server {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		wardv1.RegisterPolicyDistributionServer(g, r)
		go g.Serve(ln)
		return g
	}
	g := start()
	conn, _ := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	src := NewSource(conn, nil)
	src.MaxBackoff = 200 * time.Millisecond
	got := make(chan uint64, 16)
	go src.Run(ctx, func(s *policy.Set) { got <- s.Version() })
	r.Publish(version(t, 1, allow))
	if v := <-got; v != 1 {
		t.Fatalf("got %d", v)
	}
	g.Stop()
	r.Publish(version(t, 2, forbid))
	g = start()
	defer g.Stop()
	select {
	case v := <-got:
		if v != 2 {
			t.Fatalf("after reconnect got %d", v)
		}
	case <-ctx.Done():
		t.Fatal("source did not reconnect")
	}
	if src.Status().Reconnects == 0 {
		t.Fatal("no reconnect counted")
	}
}

// TestLargeVersionArrives: a version over gRPC's default 4 MiB receive
// limit (policies plus federated catalogs grow) still reaches the proxy; a
// source stuck on its old version would miss every revocation after it.
func TestLargeVersionArrives(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	relay := NewRelay()
	conn, _ := serve(t, relay)
	src := NewSource(conn, nil)
	got := make(chan uint64, 4)
	go src.Run(ctx, func(s *policy.Set) { got <- s.Version() })
	big := "// " + strings.Repeat("x", 6<<20) + "\n" + allow
	relay.Publish(version(t, 1, big))
	select {
	case v := <-got:
		if v != 1 {
			t.Fatalf("got version %d", v)
		}
	case <-ctx.Done():
		t.Fatalf("a 6 MiB version never arrived: %+v", src.Status())
	}
}
