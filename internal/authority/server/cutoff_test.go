package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/agenttest"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// The failure: authority b loses etcd (its link silently drops every
// packet, connections stay open) while a keeps it. b's Node API must then
// answer at once with Unavailable naming the cause (not hold calls until
// the agent's attempt timeout), end its open streams, and say not ready on
// /readyz; an agent that lists both authorities keeps getting SVIDs signed
// (through a) throughout; when the link is back b serves again.
func TestNodeAPICutOffFromEtcdFailsOver(t *testing.T) {
	etcd := etcdtest.Start(t)
	hole := netutil.NewBlackhole(t, strings.TrimPrefix(etcd.Endpoints()[0], "http://"))
	root := t.TempDir()
	var srvs []*Server
	for i, name := range []string{"a", "b"} {
		c := baseConfig(filepath.Join(root, name))
		c.TrustDomain = testTD
		c.HTTPAddress = "127.0.0.1:0"
		c.Identity = config.Identity{NodeAPIAddress: "127.0.0.1:0"}
		eps := etcd.Endpoints()
		if name == "b" {
			eps = []string{"http://" + hole.Addr()}
		}
		c.Storage.Backend = "etcd"
		c.Storage.Etcd = config.Etcd{Endpoints: eps, Prefix: "/ward/cutoff/", DialTimeout: yamlconf.Duration(5 * time.Second),
			RequestTimeout: yamlconf.Duration(time.Second), LeaseTTL: yamlconf.Duration(2 * time.Second), MemberName: name}
		s, cl := start(t, c)
		if i == 0 {
			if _, err := cl.Operator.Init(context.Background(), &wardv1.InitRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		srvs = append(srvs, s)
	}
	a, b := srvs[0], srvs[1]
	waitUntil(t, "both authorities unsealed with a Node API", func() bool {
		return !a.Sealed() && !b.Sealed() && a.NodeAPIAddress() != "" && b.NodeAPIAddress() != ""
	})
	e := &idEnv{srv: a, dir: root}
	e.conn = adminConn(t, a)
	e.entries, e.agents, e.ca = wardv1.NewEntriesClient(e.conn), wardv1.NewAgentsClient(e.conn), wardv1.NewCAClient(e.conn)
	e.refreshBundle(t)
	ctx := context.Background()

	// An agent of its own for the direct calls to b, and the real agent
	// over both authorities for the workload.
	svid := e.joinAgent(t, "probe")
	tok := e.token(t, 10*time.Minute, "node-1")
	if _, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
		SpiffeId: "spiffe://" + testTD + "/w/app", ParentId: "spiffe://" + testTD + "/ward/agent/node-1", TtlSeconds: 1800,
		Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}}}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pemBundle, _ := e.bundle.X509Bundle().Marshal()
	bp := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bp, pemBundle, 0o644); err != nil {
		t.Fatal(err)
	}
	acfg := &agent.Config{TrustDomain: testTD, ServerAddress: a.NodeAPIAddress() + "," + b.NodeAPIAddress(),
		ServerSPIFFEID: serverID().String(), TrustBundlePath: bp, JoinToken: tok.Token,
		SocketPath: filepath.Join(dir, "agent.sock"), PolicySocket: "none", DataDir: filepath.Join(dir, "data"),
		SyncInterval: yamlconf.Duration(200 * time.Millisecond), LogLevel: "info"}
	if err := acfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	agenttest.Run(t, ctx, acfg, logs, slog.LevelInfo)
	wl := workloadapi.WithAddr("unix://" + acfg.SocketPath)
	n := 0
	// jwt asks the agent for a JWT-SVID with a new audience (a signing
	// call to one of the authorities each time), bounded.
	jwt := func() error {
		n++
		c, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		_, err := workloadapi.FetchJWTSVID(c, jwtsvid.Params{Audience: "aud-" + strconv.Itoa(n)}, wl)
		return err
	}
	waitUntil(t, "a first JWT-SVID through the agent", func() bool { return jwt() == nil })

	nb := wardv1.NewNodeClient(dialNode(t, e, svid, b.NodeAPIAddress()))
	if _, err := nb.Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("Sync on b before the cut: %v", err)
	}
	if code, body := readyz(t, b); code != http.StatusOK {
		t.Fatalf("b /readyz before the cut: %d %s", code, body)
	}
	// A policy stream open on b before the cut.
	pd := wardv1.NewPolicyDistributionClient(dialNode(t, e, svid, b.NodeAPIAddress()))
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := pd.WatchPolicy(sctx, &wardv1.WatchPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	streamEnd := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				streamEnd <- err
				return
			}
		}
	}()

	hole.Cut()
	// b notices within its lease; then every call fails at once.
	var last error
	waitUntil(t, "b's Node API refusing calls with Unavailable", func() bool {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, last = nb.Sync(c, &wardv1.SyncRequest{})
		return status.Code(last) == codes.Unavailable && strings.Contains(status.Convert(last).Message(), "cut off from etcd (its lease was not renewed")
	})
	// Unauthenticated calls too (attestation): nothing there can be served.
	anon := wardv1.NewNodeClient(dialNode(t, e, nil, b.NodeAPIAddress()))
	if st, err := anon.Attest(ctx); err == nil {
		csr, _ := newCSR(t)
		st.Send(&wardv1.AttestRequest{Csr: csr, Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: e.token(t, time.Minute, "late").Token}}})
		if _, err = st.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("Attest on the cut-off authority: %v, want Unavailable", err)
		}
	}
	select {
	case err := <-streamEnd:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("the policy stream open on b ended with %v, want Unavailable", err)
		}
	case <-time.After(time.Minute): // a bound on the test, not a timing assertion
		t.Fatal("the policy stream open on b is still open a minute after b was cut off")
	}
	if code, body := readyz(t, b); code != http.StatusServiceUnavailable || !strings.Contains(body, "cut off from etcd") {
		t.Fatalf("b /readyz while cut off: %d %q, want 503 naming the cause", code, body)
	}
	if code, body := readyz(t, a); code != http.StatusOK {
		t.Fatalf("a /readyz while b is cut off: %d %s", code, body)
	}
	// The agent keeps getting new JWT-SVIDs signed (its calls that land on
	// b fail over to a at once).
	for range 6 {
		if err := jwt(); err != nil {
			t.Fatalf("JWT-SVID through the agent while b is cut off: %v", err)
		}
	}

	hole.Heal()
	waitUntil(t, "b ready again after the link came back", func() bool {
		code, _ := readyz(t, b)
		return code == http.StatusOK
	})
	waitUntil(t, "b's Node API serving again", func() bool {
		_, err := nb.Sync(ctx, &wardv1.SyncRequest{})
		return err == nil
	})
	if err := jwt(); err != nil {
		t.Fatalf("JWT-SVID after the link came back: %v", err)
	}

	// An authority cut off from etcd still stops (SIGTERM, seal): its
	// election does not wait for etcd to answer.
	hole.Cut()
	waitUntil(t, "b cut off again", func() bool { code, _ := readyz(t, b); return code == http.StatusServiceUnavailable })
	stopped := make(chan struct{})
	go func() { b.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Minute): // a bound on the test, not a timing assertion
		t.Fatal("an authority cut off from etcd did not stop within two minutes")
	}
}

// readyz returns s's /readyz status and body.
func readyz(t *testing.T, s *Server) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddress() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitUntil polls cond (bounded: a bound on the test, not a timing
// assertion) and fails naming what it waited for.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
