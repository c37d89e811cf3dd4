package workloadapi

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/node/attestor/unix"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGoSpiffeClient(t *testing.T) {
	ctx := testCtx(t)
	c := newTestCA(t)
	src := newMemSource(t, c)
	idA := src.addEntry(t, "/ns/a", uidSelector(), "test:socket:a")
	src.addEntry(t, "/ns/other", "unix:uid:4242424") // someone else
	addr := serve(t, src, workload("a"))
	client, err := gsw.New(ctx, gsw.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID != idA || svid.Hint != "internal" || len(svid.Certificates) != 2 {
		t.Fatalf("got %s hint %q with %d certs", svid.ID, svid.Hint, len(svid.Certificates))
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		t.Fatalf("fetched SVID does not verify against fetched bundles: %v", err)
	}
	xctx, err := client.FetchX509Context(ctx)
	if err != nil || len(xctx.SVIDs) != 1 {
		t.Fatalf("FetchX509Context: %v", err)
	}

	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments", ExtraAudiences: []string{"audit"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if jwt.ID != idA {
		t.Fatalf("JWT-SVID for %s", jwt.ID)
	}
	jb, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jb, []string{"audit"}); err != nil {
		t.Fatalf("JWT-SVID does not validate against fetched JWT bundles: %v", err)
	}
	validated, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "payments")
	if err != nil {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	if validated.ID != idA || validated.Claims["sub"] != idA.String() {
		t.Fatalf("validated %s claims %v", validated.ID, validated.Claims)
	}
	for name, tc := range map[string]struct{ tok, aud string }{
		"wrong audience": {jwt.Marshal(), "other"},
		"garbage":        {"not.a.jwt", "payments"},
		"tampered":       {jwt.Marshal()[:len(jwt.Marshal())-4] + "AAAA", "payments"},
	} {
		if _, err := client.ValidateJWTSVID(ctx, tc.tok, tc.aud); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ValidateJWTSVID(%s): %v, want InvalidArgument", name, err)
		}
	}

	// Sources, as applications use them.
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(addr)))
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	defer xs.Close()
	got, err := xs.GetX509SVID()
	if err != nil || got.ID != idA {
		t.Fatalf("X509Source: %v %v", got, err)
	}
	js, err := gsw.NewJWTSource(ctx, gsw.WithClientOptions(gsw.WithAddr(addr)))
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	defer js.Close()
	tok, err := js.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok.Marshal(), js, []string{"db"}); err != nil {
		t.Fatalf("JWTSource bundles do not validate its own JWT-SVID: %v", err)
	}
}

// rawClient dials the socket with plain gRPC so tests control metadata.
func rawClient(t testing.TB, addr string) pb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, HeaderKey, HeaderValue)
}

func TestSecurityHeaderRequired(t *testing.T) {
	ctx := testCtx(t)
	src := newMemSource(t, newTestCA(t))
	src.addEntry(t, "/a", uidSelector())
	cl := rawClient(t, serve(t, src, workload("a")))
	wrong := metadata.AppendToOutgoingContext(ctx, HeaderKey, "yes")
	for _, c := range []context.Context{ctx, wrong} {
		calls := map[string]func() error{
			"FetchX509SVID": func() error {
				s, err := cl.FetchX509SVID(c, &pb.X509SVIDRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchX509Bundles": func() error {
				s, err := cl.FetchX509Bundles(c, &pb.X509BundlesRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchJWTBundles": func() error {
				s, err := cl.FetchJWTBundles(c, &pb.JWTBundlesRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchJWTSVID": func() error {
				_, err := cl.FetchJWTSVID(c, &pb.JWTSVIDRequest{Audience: []string{"a"}})
				return err
			},
			"ValidateJWTSVID": func() error {
				_, err := cl.ValidateJWTSVID(c, &pb.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
				return err
			},
		}
		for name, call := range calls {
			if err := call(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header") {
				t.Errorf("%s without header: %v, want InvalidArgument", name, err)
			}
		}
	}
	// With the header the same stream works.
	s, err := cl.FetchX509SVID(withHeader(ctx), &pb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("with header: %v", err)
	}
}

func TestNoMatchingEntry(t *testing.T) {
	ctx := testCtx(t)
	c := newTestCA(t)
	src := newMemSource(t, c)
	src.addEntry(t, "/someone-else", "unix:uid:4242424")
	src.addEntry(t, "/needs-both", uidSelector(), "unix:path:/nonexistent/binary")
	addr := serve(t, src, workload("a"))
	client, err := gsw.New(ctx, gsw.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchX509SVID: %v, want PermissionDenied", err)
	}
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTSVID: %v, want PermissionDenied", err)
	}
	if _, err := client.FetchX509Bundles(ctx); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchX509Bundles: %v, want PermissionDenied", err)
	}
	if _, err := client.FetchJWTBundles(ctx); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTBundles: %v, want PermissionDenied", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, "a.b.c", "a"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ValidateJWTSVID: %v, want PermissionDenied", err)
	}

	// Verifiers without identity, when allowed, get bundles and validation.
	addr2 := serve(t, src, workload("a"), WithAllowUnauthenticatedVerifiers())
	client2, err := gsw.New(ctx, gsw.WithAddr(addr2))
	if err != nil {
		t.Fatal(err)
	}
	defer client2.Close()
	if _, err := client2.FetchX509Bundles(ctx); err != nil {
		t.Errorf("FetchX509Bundles with unauthenticated verifiers: %v", err)
	}
	tok, err := c.SignJWTSVID(ctx, spiffeid.RequireFromPath(td, "/x"), []string{"me"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if svid, err := client2.ValidateJWTSVID(ctx, tok.Token, "me"); err != nil || svid.ID.Path() != "/x" {
		t.Errorf("ValidateJWTSVID with unauthenticated verifiers: %v", err)
	}
	if _, err := client2.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchX509SVID still needs an identity: %v", err)
	}
}

func TestFetchJWTSVIDArguments(t *testing.T) {
	ctx := withHeader(testCtx(t))
	src := newMemSource(t, newTestCA(t))
	a := src.addEntry(t, "/a", uidSelector())
	b := src.addEntry(t, "/b", uidSelector(), "test:socket:a")
	src.addEntry(t, "/c", "unix:uid:4242424")
	cl := rawClient(t, serve(t, src, workload("a")))
	for _, tc := range []struct {
		name string
		req  *pb.JWTSVIDRequest
		code codes.Code
		ids  []string
	}{
		{"all", &pb.JWTSVIDRequest{Audience: []string{"x"}}, codes.OK, []string{a.String(), b.String()}},
		{"one", &pb.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: b.String()}, codes.OK, []string{b.String()}},
		{"not entitled", &pb.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "spiffe://prod-eu.example.org/c"}, codes.PermissionDenied, nil},
		{"bad id", &pb.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "not an id"}, codes.InvalidArgument, nil},
		{"no audience", &pb.JWTSVIDRequest{}, codes.InvalidArgument, nil},
		{"empty audience", &pb.JWTSVIDRequest{Audience: []string{""}}, codes.InvalidArgument, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := cl.FetchJWTSVID(ctx, tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("err %v, want %s", err, tc.code)
			}
			if err != nil {
				return
			}
			var ids []string
			for _, s := range resp.Svids {
				ids = append(ids, s.SpiffeId)
				if s.Svid == "" {
					t.Error("empty token")
				}
			}
			if strings.Join(ids, ",") != strings.Join(tc.ids, ",") {
				t.Errorf("ids %v, want %v", ids, tc.ids)
			}
		})
	}
}

// TestStreamsPushFullState: the first message comes at once, later
// messages carry the full state after each change, and losing the last
// identity ends the stream with PermissionDenied.
func TestStreamsPushFullState(t *testing.T) {
	ctx := withHeader(testCtx(t))
	c := newTestCA(t)
	src := newMemSource(t, c)
	a := src.addEntry(t, "/a", uidSelector())
	cl := rawClient(t, serve(t, src, workload("a")))

	xs, err := cl.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bs, err := cl.FetchX509Bundles(ctx, &pb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := cl.FetchJWTBundles(ctx, &pb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first := mustRecv(t, xs)
	if len(first.Svids) != 1 || first.Svids[0].SpiffeId != a.String() {
		t.Fatalf("first message: %v", first.Svids)
	}
	checkSVIDMessage(t, first.Svids[0], c)
	b0 := mustRecv(t, bs)
	if len(b0.Bundles) != 1 || len(b0.Bundles[td.IDString()]) == 0 {
		t.Fatalf("X509 bundles: %v", b0.Bundles)
	}
	j0 := mustRecv(t, js)
	if !strings.Contains(string(j0.Bundles[td.IDString()]), `"keys"`) {
		t.Fatalf("JWT bundles: %s", j0.Bundles[td.IDString()])
	}

	// A second entry for the same caller: the next message holds both.
	b := src.addEntry(t, "/b", uidSelector())
	second := mustRecv(t, xs)
	if len(second.Svids) != 2 || second.Svids[0].SpiffeId != a.String() || second.Svids[1].SpiffeId != b.String() {
		t.Fatalf("second message: %d svids", len(second.Svids))
	}

	// A federated trust domain appears and b federates with it: bundles
	// stream gets both (TestFederatedBundlesOnlyForFederatingCallers: not
	// before an identity of the caller federates with it); the SVID that
	// federates with it carries it.
	other := spiffeid.RequireTrustDomainFromString("partner.example.com")
	ob, _ := authoritytest.New(t, authoritytest.WithTrustDomain(other.Name())).CA.Bundle()
	src.setFederated(ob)
	src.setFederatesWith(b, other)
	b1 := mustRecv(t, bs)
	if len(b1.Bundles) != 2 || len(b1.Bundles[other.IDString()]) == 0 {
		t.Fatalf("X509 bundles after federation: %d", len(b1.Bundles))
	}
	j1 := mustRecv(t, js)
	if len(j1.Bundles) != 2 {
		t.Fatalf("JWT bundles after federation: %d", len(j1.Bundles))
	}
	var fed *pb.X509SVIDResponse
	for fed == nil || len(fed.FederatedBundles) == 0 {
		fed = mustRecv(t, xs)
	}
	roots, err := x509.ParseCertificates(fed.FederatedBundles[other.IDString()])
	if err != nil || len(roots) != 1 || !roots[0].Equal(ob.X509Authorities()[0]) {
		t.Fatalf("federated bundle: %v", err)
	}

	// The entries go away: the stream ends with PermissionDenied.
	src.removeEntry(a)
	src.removeEntry(b)
	for {
		_, err := xs.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream ended with %v, want PermissionDenied", err)
		}
		break
	}
}

// TestTaintPushesCRLAndNewSVID: tainting the intermediate reaches the
// workload as a CRL revoking it and an SVID re-issued under a fresh one.
func TestTaintPushesCRLAndNewSVID(t *testing.T) {
	ctx := withHeader(testCtx(t))
	c := newTestCA(t)
	src := newMemSource(t, c)
	a := src.addEntry(t, "/a", uidSelector())
	cl := rawClient(t, serve(t, src, workload("a")))
	xs, err := cl.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bs, err := cl.FetchX509Bundles(ctx, &pb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m := mustRecv(t, xs); len(m.Crl) != 0 {
		t.Fatal("CRL before taint")
	}
	mustRecv(t, bs)
	old, _ := c.ActiveIntermediate()
	id, _ := keyutil.CAKeyID(old.PublicKey)
	if err := c.Taint(ctx, id); err != nil {
		t.Fatal(err)
	}
	src.refreshBundle(t)
	src.issue(t, a)
	var m *pb.X509SVIDResponse
	for {
		m = mustRecv(t, xs)
		chain, err := x509.ParseCertificates(m.Svids[0].X509Svid)
		if err != nil {
			t.Fatal(err)
		}
		if !chain[1].Equal(old) {
			break
		}
	}
	if len(m.Crl) != 1 {
		t.Fatalf("%d CRLs in the SVID message", len(m.Crl))
	}
	crl, err := x509.ParseRevocationList(m.Crl[0])
	if err != nil || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(old.SerialNumber) != 0 {
		t.Fatalf("CRL does not revoke the tainted intermediate: %v", err)
	}
	if b := mustRecv(t, bs); len(b.Crl) != 1 {
		t.Fatalf("%d CRLs in the bundles message", len(b.Crl))
	}
}

// TestNotReadyIsUnavailable: an entitled caller whose SVID or bundle the
// agent does not have yet gets Unavailable (go-spiffe retries), not
// PermissionDenied.
func TestNotReadyIsUnavailable(t *testing.T) {
	ctx := testCtx(t)
	c := newTestCA(t)
	src := newMemSource(t, c)
	a := src.addEntry(t, "/a", uidSelector())
	client, err := gsw.New(ctx, gsw.WithAddr(serve(t, src, workload("a"))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	src.mu.Lock()
	ident := src.idents[a]
	src.idents[a] = Identity{ID: a}
	src.mu.Unlock()
	if _, err := client.FetchX509SVID(ctx); status.Code(err) != codes.Unavailable {
		t.Errorf("no SVID yet: %v, want Unavailable", err)
	}
	src.mu.Lock()
	src.idents[a] = ident
	src.bundle = nil
	src.mu.Unlock()
	if _, err := client.FetchX509SVID(ctx); status.Code(err) != codes.Unavailable {
		t.Errorf("no bundle yet: %v, want Unavailable", err)
	}
	src.refreshBundle(t)
	if _, err := client.FetchX509SVID(ctx); err != nil {
		t.Errorf("ready: %v", err)
	}
}

func mustRecv[T any](t *testing.T, s grpc.ServerStreamingClient[T]) *T {
	t.Helper()
	m, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m
}

func checkSVIDMessage(t *testing.T, m *pb.X509SVID, c *ca.CA) {
	t.Helper()
	svid, err := x509svid.ParseRaw(m.X509Svid, m.X509SvidKey)
	if err != nil {
		t.Fatalf("go-spiffe cannot parse the message's SVID and key: %v", err)
	}
	roots, err := x509.ParseCertificates(m.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Bundle()
	if !spiffebundle.FromX509Authorities(td, roots).X509Bundle().Equal(b.X509Bundle()) {
		t.Error("message bundle differs from the CA bundle")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b.X509Bundle()); err != nil {
		t.Fatal(err)
	}
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "wapi")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: the socket file stays behind.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o777 {
		t.Errorf("socket mode %v", fi.Mode())
	}
	l2.Close()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("regular file changed")
	}
}

// TestConcurrentClients runs many streams and unary calls while the source
// changes; run with -race.
func TestConcurrentClients(t *testing.T) {
	ctx := withHeader(testCtx(t))
	c := newTestCA(t)
	src := newMemSource(t, c)
	src.addEntry(t, "/a", uidSelector())
	cl := rawClient(t, serve(t, src, workload("a")))
	var wg sync.WaitGroup
	const clients, updates = 8, 10
	for i := 0; i < clients; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			s, err := cl.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
			if err != nil {
				t.Error(err)
				return
			}
			// Each client sees the initial state and then converges on the
			// final one; intermediate states may be coalesced.
			for {
				m, err := s.Recv()
				if err != nil {
					t.Error(err)
					return
				}
				if len(m.Svids) == 1 && m.Svids[0].Hint == "final" {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < updates; j++ {
				if _, err := cl.FetchJWTSVID(ctx, &pb.JWTSVIDRequest{Audience: []string{"x"}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for j := 0; j < updates; j++ {
		src.reissueAll(t)
	}
	src.mu.Lock()
	for id, ident := range src.idents {
		ident.Hint = "final"
		src.idents[id] = ident
	}
	src.notifyLocked()
	src.mu.Unlock()
	wg.Wait()
}

var _ attest.Attestor = socketAttestor("")

// TestPeerCallerUnix: a real unix connection reports this process's pid,
// uid and gid, and (on kernels with SO_PEERPIDFD) a pidfd of this process.
func TestPeerCallerUnix(t *testing.T) {
	dir, err := os.MkdirTemp("", "wapi")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := Listen(filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", filepath.Join(dir, "s.sock"))
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	wrapped, info, err := peercred.Credentials().ServerHandshake(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer wrapped.Close()
	c := info.(peercred.AuthInfo).Caller
	if int(c.PID) != os.Getpid() || int(c.UID) != os.Getuid() || int(c.GID) != os.Getgid() {
		t.Fatalf("caller %+v, want pid %d uid %d gid %d", c, os.Getpid(), os.Getuid(), os.Getgid())
	}
	if c.PIDFD == nil {
		t.Skip("kernel without SO_PEERPIDFD")
	}
	if _, err := unix.New().Attest(context.Background(), c); err != nil {
		t.Fatalf("attest with the connection's pidfd: %v", err)
	}
}

// TestRefusalNamesTheCallersSelectors: a caller no entry matches learns
// what it attested as (so a waiting proxy can say what is missing), and
// the agent logs the refusal with those selectors, once per minute for
// the same caller.
func TestRefusalNamesTheCallersSelectors(t *testing.T) {
	ctx := testCtx(t)
	src := newMemSource(t, newTestCA(t))
	src.addEntry(t, "/someone-else", "unix:uid:4242424")
	logs := &syncbuf.Buffer{}
	addr := serve(t, src, workload("a"), WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	client, err := gsw.New(ctx, gsw.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for range 3 {
		_, err = client.FetchX509SVID(ctx)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("FetchX509SVID: %v, want PermissionDenied", err)
		}
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{"no registration entry", uidSelector(), "test:socket:a", "ward entry create"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not name %q", msg, want)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "no registration entry matches the caller"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, uidSelector()) {
		t.Errorf("refusal log without the caller's selectors:\n%s", out)
	}
}

// TestFederatedBundlesOnlyForFederatingCallers: the agent holds the
// bundles of every trust domain some entry of the node federates with, but
// a workload gets (FetchX509Bundles, FetchJWTBundles) and validates with
// (ValidateJWTSVID) only those its own entries name in federates_with, as
// docs/federation.md says. Before, any workload of the node, and any
// verifier, got them all: one whose entries federate with no one accepted
// JWT-SVIDs (and, through a bundle source, X509-SVIDs) of a trust domain
// another workload federates with.
func TestFederatedBundlesOnlyForFederatingCallers(t *testing.T) {
	ctx := withHeader(testCtx(t))
	src := newMemSource(t, newTestCA(t))
	a := src.addEntry(t, "/a", uidSelector())
	other := spiffeid.RequireTrustDomainFromString("partner.example.com")
	partner := authoritytest.New(t, authoritytest.WithTrustDomain(other.Name())).CA
	ob, _ := partner.Bundle()
	src.setFederated(ob) // another workload's entry federates with partner
	tok, err := partner.SignJWTSVID(ctx, spiffeid.RequireFromPath(other, "/admin"), []string{"me"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cl := rawClient(t, serve(t, src, workload("a")))
	for _, unauth := range []bool{false, true} {
		if unauth {
			cl = rawClient(t, serve(t, src, workload("a"), WithAllowUnauthenticatedVerifiers()))
		}
		bs, err := cl.FetchX509Bundles(ctx, &pb.X509BundlesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if b := mustRecv(t, bs); len(b.Bundles) != 1 || b.Bundles[other.IDString()] != nil {
			t.Fatalf("X509 bundles of a caller that federates with no one: %d, want its own only", len(b.Bundles))
		}
		js, err := cl.FetchJWTBundles(ctx, &pb.JWTBundlesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if j := mustRecv(t, js); len(j.Bundles) != 1 || j.Bundles[other.IDString()] != nil {
			t.Fatalf("JWT bundles of a caller that federates with no one: %d, want its own only", len(j.Bundles))
		}
		if r, err := cl.ValidateJWTSVID(ctx, &pb.ValidateJWTSVIDRequest{Svid: tok.Token, Audience: "me"}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("a caller that federates with no one validated %s's JWT-SVID: %v %v", other, r, err)
		}
	}

	src.setFederatesWith(a, other)
	cl = rawClient(t, serve(t, src, workload("a")))
	bs, err := cl.FetchX509Bundles(ctx, &pb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if b := mustRecv(t, bs); len(b.Bundles) != 2 || len(b.Bundles[other.IDString()]) == 0 {
		t.Fatalf("X509 bundles of a caller that federates with %s: %d", other, len(b.Bundles))
	}
	if r, err := cl.ValidateJWTSVID(ctx, &pb.ValidateJWTSVIDRequest{Svid: tok.Token, Audience: "me"}); err != nil || r.SpiffeId != other.IDString()+"/admin" {
		t.Fatalf("a caller that federates with %s: %v %v", other, r, err)
	}
}
