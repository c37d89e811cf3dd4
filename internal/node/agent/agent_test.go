package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/clock"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var testTD = spiffeid.RequireTrustDomainFromString("agent.example.org")

type runningAgent struct {
	*Agent
	clock  *clock.Fake
	logs   *syncbuf.Buffer
	socket string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, once done is closed
}

func (r *runningAgent) stop(t testing.TB) {
	r.cancel()
	<-r.done
	if r.err != nil {
		t.Fatalf("agent Run: %v", r.err)
	}
}

func (r *runningAgent) addr() workloadapi.ClientOption {
	return workloadapi.WithAddr("unix://" + r.socket)
}

// agentConfig writes the bundle into dir and returns a config for auth.
func agentConfig(t testing.TB, auth *testAuthority, dir string) *Config {
	t.Helper()
	b, err := auth.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	pemBundle, _ := b.X509Bundle().Marshal()
	bp := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bp, pemBundle, 0o644)
	return &Config{TrustDomain: testTD.Name(), ServerAddress: auth.addr, ServerSPIFFEID: "spiffe://" + testTD.Name() + "/ward/server",
		TrustBundlePath: bp, SocketPath: filepath.Join(dir, "agent.sock"), DataDir: filepath.Join(dir, "data"),
		SyncInterval: 200 * 1e6, LogLevel: "debug"}
}

// joinTokenAgentConfig is agentConfig in a fresh directory, attesting
// with a join token of auth written (newline-terminated, as an operator
// would) to the agent's join_token_file.
func joinTokenAgentConfig(t testing.TB, auth *testAuthority) *Config {
	t.Helper()
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cfg.JoinTokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(cfg.JoinTokenFile, []byte(auth.joinToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startAgent(t testing.TB, cfg *Config, clk *clock.Fake) *runningAgent {
	t.Helper()
	logs := &syncbuf.Buffer{}
	a, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	if clk == nil {
		clk = clock.Running()
	}
	a.now = clk.Now
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, clock: clk, logs: logs, socket: cfg.SocketPath, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = a.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	return r
}

// waitFor polls cond (bounded) and fails with what.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func uidSelector() string { return "unix:uid:" + strconv.Itoa(os.Getuid()) }

func fetchSVID(t testing.TB, r *runningAgent) (*x509svid.SVID, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return workloadapi.FetchX509SVID(ctx, r.addr())
}

func mustFetch(t testing.TB, r *runningAgent) *x509svid.SVID {
	t.Helper()
	var sv *x509svid.SVID
	waitFor(t, "an X509-SVID from the Workload API", func() bool {
		var err error
		sv, err = fetchSVID(t, r)
		return err == nil
	})
	return sv
}

func serial(sv *x509svid.SVID) string { return sv.Certificates[0].SerialNumber.String() }

// TestAgentServesWorkloads: join-token attestation, sync, issuance, the
// Workload API through go-spiffe's client, JWT-SVID caching, and
// PermissionDenied for a caller matching no entry.
func TestAgentServesWorkloads(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)

	sv := mustFetch(t, r)
	if sv.ID.Path() != "/web" {
		t.Fatalf("got %s", sv.ID)
	}
	b, _ := auth.ca.Bundle()
	if _, _, err := x509svid.Verify(sv.Certificates, b.X509Bundle()); err != nil {
		t.Fatalf("SVID does not verify against the authority's bundle: %v", err)
	}
	if st := r.Status(); !strings.HasPrefix(st.AgentID, "spiffe://agent.example.org/ward/agent/") || st.SVIDs != 1 || st.Entries != 1 || st.SecondsSinceLastSync < 0 {
		t.Fatalf("status: %+v", st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j1, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}, r.addr())
	if err != nil {
		t.Fatal(err)
	}
	j2, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}, r.addr())
	if err != nil {
		t.Fatal(err)
	}
	if j1.Marshal() != j2.Marshal() || auth.count("SignJWTSVID") != 1 {
		t.Fatalf("JWT-SVID not cached: %d signings", auth.count("SignJWTSVID"))
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, j1.Marshal(), "db", r.addr()); err != nil {
		t.Fatalf("validate: %v", err)
	}
	// A second audience is a second token.
	if j3, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "cache"}, r.addr()); err != nil || j3.Marshal() == j1.Marshal() {
		t.Fatalf("other audience: %v", err)
	}

	// A caller whose selectors match no entry: delete the entry.
	auth.removeEntries()
	waitFor(t, "PermissionDenied once the entry is gone", func() bool {
		_, err := fetchSVID(t, r)
		return status.Code(err) == codes.PermissionDenied
	})
}

// TestAgentRotatesAndPushes: a stream gets a fresh SVID (new key) at half
// life without asking, and a new bundle at once.
func TestAgentRotatesAndPushes(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 2*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(r.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, _ := src.GetX509SVID()
	r.clock.Advance(35 * time.Minute) // past 55% of the hour
	r.poke()
	waitFor(t, "a rotated SVID pushed to the stream", func() bool {
		sv, _ := src.GetX509SVID()
		return serial(sv) != serial(first)
	})
	second, _ := src.GetX509SVID()
	if publicKeyEqual(second.PrivateKey.Public(), first.PrivateKey.Public()) {
		t.Fatal("rotation reused the key")
	}
	// The agent SVID (2h) is not yet due; the root rotation reaches the
	// bundle stream at the next sync.
	if err := auth.ca.PrepareRoot(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the prepared root in the pushed bundle", func() bool {
		b, err := src.GetX509BundleForTrustDomain(testTD)
		return err == nil && len(b.X509Authorities()) == 2
	})
	if auth.count("RenewAgent") != 0 {
		t.Fatal("agent SVID renewed before half life")
	}
	r.clock.Advance(40 * time.Minute) // agent SVID past 55% of 2h
	r.poke()
	waitFor(t, "agent SVID renewal", func() bool { return auth.count("RenewAgent") > 0 })
}

// TestAgentRestartWhileAuthorityDown: the cache carries SVIDs across a
// restart with the authority unreachable; staleness is reported; when the
// authority returns, overdue rotations happen by themselves.
func TestAgentRestartWhileAuthorityDown(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 2*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := joinTokenAgentConfig(t, auth)
	r1 := startAgent(t, cfg, nil)
	before := mustFetch(t, r1)
	jctx, jcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer jcancel()
	jwt1, err := workloadapi.FetchJWTSVID(jctx, jwtsvid.Params{Audience: "db"}, r1.addr())
	if err != nil {
		t.Fatal(err)
	}
	r1.stop(t)

	auth.stop()
	clk := clock.Running()
	r2 := startAgent(t, cfg, clk)
	cached := mustFetch(t, r2)
	if serial(cached) != serial(before) {
		t.Fatal("restarted agent did not serve the cached SVID")
	}
	if jwt2, err := workloadapi.FetchJWTSVID(jctx, jwtsvid.Params{Audience: "db"}, r2.addr()); err != nil || jwt2.Marshal() != jwt1.Marshal() {
		t.Fatalf("restarted agent without authority did not serve the cached JWT-SVID: %v", err)
	}
	clk.Advance(20 * time.Minute)
	r2.poke()
	waitFor(t, "staleness in status and logs", func() bool {
		st := r2.Status()
		return st.SecondsSinceLastSync >= 20*60 && st.LastError != "" && st.SVIDs == 1 &&
			strings.Contains(r2.logs.String(), "authority unreachable; serving cached SVIDs")
	})
	if st := r2.Status(); st.SoonestSVIDExpiry.IsZero() || st.AgentID == "" {
		t.Fatalf("status while stale: %+v", st)
	}
	clk.Advance(15 * time.Minute) // rotation is now overdue; SVID still valid
	r2.poke()
	if sv := mustFetch(t, r2); serial(sv) != serial(before) {
		t.Fatal("rotated while the authority was down?")
	}
	if n := auth.count("Attest"); n != 1 {
		t.Fatalf("restart attested again (%d attestations): the join token is single use", n)
	}
	auth.restart()
	waitFor(t, "catch-up rotation after the authority returns", func() bool {
		sv, err := fetchSVID(t, r2)
		return err == nil && serial(sv) != serial(before)
	})
	if st := r2.Status(); st.LastError != "" || st.SecondsSinceLastSync > 60 {
		t.Fatalf("status after recovery: %+v", st)
	}
}

// TestAgentEvictedX509PopReattests: an evicted x509pop agent attests again
// by itself, and forgets the JWT-SVIDs it cached before (revoked).
func TestAgentEvictedX509PopReattests(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	auth.addEntry("/web", uidSelector())
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cp, kp := auth.nodeCert(dir)
	cfg.X509Pop = &X509Pop{CertPath: cp, KeyPath: kp}
	r := startAgent(t, cfg, nil)
	mustFetch(t, r)
	web := spiffeid.RequireFromPath(testTD, "/web")
	before, err := r.MintJWTSVID(context.Background(), web, []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString(r.Status().AgentID)
	auth.evict(id)
	waitFor(t, "re-attestation after eviction", func() bool { return auth.count("Attest") >= 2 })
	waitFor(t, "normal service after re-attestation", func() bool {
		st := r.Status()
		return !st.Evicted && st.AgentID == id.String() && st.LastError == ""
	})
	// The JWT-SVID cached before the eviction is revoked by it: never
	// handed out again; the workload gets a new one.
	after, err := r.MintJWTSVID(context.Background(), web, []string{"orders"})
	if err != nil || after == before {
		t.Fatalf("JWT-SVID after the eviction: the one cached before it is handed out again (%v)", err)
	}
	if !strings.Contains(r.logs.String(), "attesting again with x509pop") {
		t.Fatal("eviction not logged")
	}
}

// TestAgentEvictedJoinTokenStops: an evicted join-token agent stops
// issuing (keeps serving what it holds) until given a new token.
func TestAgentEvictedJoinTokenStops(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	auth.addEntry("/web", uidSelector())
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cfg.JoinTokenFile = filepath.Join(dir, "token")
	os.WriteFile(cfg.JoinTokenFile, []byte(auth.joinToken()), 0o600)
	r := startAgent(t, cfg, nil)
	held := mustFetch(t, r)
	auth.evict(spiffeid.RequireFromString(r.Status().AgentID))
	waitFor(t, "evicted status", func() bool { return r.Status().Evicted })
	waitFor(t, "the spent-token error", func() bool { return strings.Contains(r.logs.String(), "join token is spent") })
	if n := auth.count("Attest"); n != 1 {
		t.Fatalf("offered a spent join token again (%d attestations)", n)
	}
	if sv := mustFetch(t, r); serial(sv) != serial(held) {
		t.Fatal("held SVID not served after eviction")
	}
	signs := auth.count("SignX509SVIDs")
	r.clock.Advance(40 * time.Minute)
	r.poke()
	waitFor(t, "a sync attempt", func() bool { return r.Status().SecondsSinceLastSync > 30*60 })
	if auth.count("SignX509SVIDs") != signs {
		t.Fatal("evicted agent still asked for SVIDs")
	}
	os.WriteFile(cfg.JoinTokenFile, []byte(auth.joinToken()), 0o600)
	waitFor(t, "attestation with the new token and a fresh SVID", func() bool {
		sv, err := fetchSVID(t, r)
		return auth.count("Attest") == 2 && err == nil && serial(sv) != serial(held) && !r.Status().Evicted
	})
}

func TestNewRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{TrustDomain: testTD.Name(), ServerAddress: "127.0.0.1:1", ServerSPIFFEID: "spiffe://agent.example.org/ward/server",
		TrustBundlePath: filepath.Join(dir, "missing.pem"), JoinToken: "x", SocketPath: filepath.Join(dir, "s.sock"),
		DataDir: filepath.Join(dir, "data"), SyncInterval: 1e9, LogLevel: "info"}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "trust_bundle_path") {
		t.Fatalf("missing bundle: %v", err)
	}
	os.WriteFile(cfg.TrustBundlePath, []byte("not a bundle"), 0o644)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "ward ca bundle") {
		t.Fatalf("garbage bundle: %v", err)
	}
	os.WriteFile(cfg.TrustBundlePath, []byte(`{"keys":[]}`), 0o644)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "no X.509 authority") {
		t.Fatalf("empty bundle: %v", err)
	}
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	good := agentConfig(t, auth, dir)
	cfg.TrustBundlePath = good.TrustBundlePath
	cfg.JoinToken = ""
	cp, _ := auth.nodeCert(dir)
	other, _ := auth.nodeCert(t.TempDir())
	_ = other
	cfg.X509Pop = &X509Pop{CertPath: cp, KeyPath: filepath.Join(t.TempDir(), "node.key")}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "key_path") {
		t.Fatalf("missing key: %v", err)
	}
}

// TestAgentReissuesSVIDsOfATaintedKey: after `ward ca taint`, SVIDs signed
// by the tainted intermediate are re-issued at the next sync, long before
// their normal rotation.
func TestAgentReissuesSVIDsOfATaintedKey(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 2*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)
	first := mustFetch(t, r)
	oldKID, err := keyutil.CAKeyID(first.Certificates[1].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := auth.ca.Rotate(ctx); err != nil { // a fresh intermediate signs from now on
		t.Fatal(err)
	}
	if err := auth.ca.Taint(ctx, oldKID); err != nil {
		t.Fatal(err)
	}
	r.poke()
	waitFor(t, "an SVID from an untainted intermediate", func() bool {
		sv, err := fetchSVID(t, r)
		if err != nil || len(sv.Certificates) < 2 {
			return false
		}
		kid, _ := keyutil.CAKeyID(sv.Certificates[1].PublicKey)
		return kid != oldKID && serial(sv) != serial(first)
	})
}

// TestRefusedAgentSVIDRenewsAtOnce: when the authority refuses the agent
// SVID (Unauthenticated, e.g. it chains to a tainted CA key) the agent
// renews it at once, not at the next sync (an hour away here), and since
// the authority was reachable all along it never logs that it is
// "reachable again".
func TestRefusedAgentSVIDRenewsAtOnce(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 24*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	cfg.SyncInterval = yamlconf.Duration(time.Hour)
	r := startAgent(t, cfg, nil)
	sv := mustFetch(t, r)
	syncs := auth.count("Sync")
	// Taint the intermediate that signed the agent's SVIDs: the Node API
	// refuses the agent SVID (Unauthenticated) for everything but RenewAgent.
	oldKID, err := keyutil.CAKeyID(sv.Certificates[1].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := auth.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := auth.ca.Taint(ctx, oldKID); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(time.Hour + time.Minute) // the next sync is due; it is refused
	r.poke()
	waitFor(t, "the renewal after the refused sync", func() bool { return auth.count("RenewAgent") >= 1 })
	if !strings.Contains(r.logs.String(), "refused the agent SVID; renewing it") {
		t.Fatalf("refusal not logged:\n%s", r.logs.String())
	}
	if n := auth.count("Sync"); n != syncs { // the refused sync never reached the service
		t.Fatalf("the renewal waited for another sync (%d syncs after the refused one)", n-syncs)
	}
	r.clock.Advance(time.Hour + time.Minute)
	r.poke()
	waitFor(t, "a sync after the renewal", func() bool { return r.Status().LastError == "" && auth.count("Sync") >= syncs+1 })
	if strings.Contains(r.logs.String(), "reachable again") {
		t.Fatalf("logged the authority as reachable again though it never was unreachable:\n%s", r.logs.String())
	}
}

// TestSyncWithLargeFederatedBundles: Sync carries the bundle of every
// trust domain the agent's entries federate with, each up to the 1 MiB a
// foreign bundle may have (federation.MaxBundleSize), and the authority
// sends up to 64 MiB. The agent received at most gRPC's default 4 MiB, so
// a few large foreign bundles (which their trust domains control) made
// every Sync of the node fail with ResourceExhausted: no entries, no SVIDs.
func TestSyncWithLargeFederatedBundles(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 24*time.Hour)
	var tds []string
	for i := range 6 {
		tds = append(tds, fmt.Sprintf("fed%d.example", i))
	}
	auth.mu.Lock()
	auth.federated = func(names []string) map[string][]byte {
		out := map[string][]byte{}
		for _, n := range names {
			out[n] = bigBundle(t, n, 1<<20)
		}
		return out
	}
	auth.mu.Unlock()
	auth.addEntryFederated("/web", tds, uidSelector())
	cfg := agentConfig(t, auth, t.TempDir())
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)
	mustFetch(t, r)
}

// bigBundle is a SPIFFE bundle of td of about size bytes: one CA
// certificate listed again and again (as a bundle with many authorities).
func bigBundle(t testing.TB, td string, size int) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf(`{"use":"x509-svid","kty":"EC","crv":"P-256","x":%q,"y":%q,"x5c":[%q]}`,
		base64.RawURLEncoding.EncodeToString(k.X.FillBytes(make([]byte, 32))),
		base64.RawURLEncoding.EncodeToString(k.Y.FillBytes(make([]byte, 32))),
		base64.StdEncoding.EncodeToString(der))
	var b strings.Builder
	b.WriteString(`{"spiffe_sequence":1,"keys":[`)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(key)
	}
	b.WriteString("]}")
	return []byte(b.String())
}

// TestAgentEvictionDropPersistsJWTs: the JWT-SVIDs an eviction revokes
// leave the disk cache when the agent learns of it, not at a later save:
// an agent restarted right after (the authority away) does not serve
// them again.
func TestAgentEvictionDropPersistsJWTs(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 2*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := joinTokenAgentConfig(t, auth)
	r1 := startAgent(t, cfg, nil)
	mustFetch(t, r1)
	jctx, jcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer jcancel()
	jwt1, err := workloadapi.FetchJWTSVID(jctx, jwtsvid.Params{Audience: "db"}, r1.addr())
	if err != nil {
		t.Fatal(err)
	}
	r1.stop(t) // saved with the token
	// The agent learns of its eviction (as a sync refused with
	// PermissionDenied tells it) and nothing is saved after that.
	r1.noteFailure(r1.now(), "sync", status.Error(codes.PermissionDenied, "evicted"))
	auth.stop()
	r2 := startAgent(t, cfg, nil)
	if jwt2, err := workloadapi.FetchJWTSVID(jctx, jwtsvid.Params{Audience: "db"}, r2.addr()); err == nil && jwt2.Marshal() == jwt1.Marshal() {
		t.Fatal("restarted after the eviction, the agent serves the revoked JWT-SVID from its disk cache")
	}
}

// TestAgentEvictedMintServesNoCachedJWT: an agent that learns of its
// eviction from a JWT-SVID mint (refused, PermissionDenied) before its
// next sync does not fall back to the token it cached (revoked by the
// eviction), as it does when the authority is only unreachable.
func TestAgentEvictedMintServesNoCachedJWT(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, 2*time.Hour)
	auth.addEntry("/web", uidSelector())
	cfg := joinTokenAgentConfig(t, auth)
	clk := clock.Running()
	r := startAgent(t, cfg, clk)
	mustFetch(t, r)
	web := spiffeid.RequireFromPath(testTD, "/web")
	before, err := r.MintJWTSVID(context.Background(), web, []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	auth.evict(spiffeid.RequireFromString(r.Status().AgentID))
	clk.Advance(35 * time.Minute) // past the token's refresh (half of its 1h here), before its expiry
	after, err := r.MintJWTSVID(context.Background(), web, []string{"orders"})
	if after == before {
		t.Fatal("the evicted agent served its cached (revoked) JWT-SVID when the mint was refused")
	}
	if err == nil || !strings.Contains(err.Error(), "evicted") {
		t.Fatalf("mint through the evicted agent: %q, %v; want an error saying it was refused (evicted?)", after, err)
	}
}
