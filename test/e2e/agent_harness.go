package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/wardproject/ward/internal/testutil/netns"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/otheruid"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
	"google.golang.org/grpc/status"
)

// Workload helper mode: the test binary re-executes itself (as another
// uid) with WARD_E2E_WORKLOAD set, and runs go-spiffe's own Workload API
// client instead of the tests. init runs before TestMain, so the helper
// never builds ward.
const (
	envWorkload = "WARD_E2E_WORKLOAD" // server, client or fetch
	envSocket   = "WARD_E2E_SOCKET"
	EnvPeer     = "WARD_E2E_PEER"   // SPIFFE ID the other side must have
	EnvAddr     = "WARD_E2E_ADDR"   // client: where the server listens
	EnvListen   = "WARD_E2E_LISTEN" // server: where to listen (default 127.0.0.1:0)
	// envBundles set: the client also verifies the server's chain with a
	// go-spiffe BundleSource of its own Workload API (bundles=ok).
	EnvBundles = "WARD_E2E_BUNDLE_SOURCE"
)

func init() {
	mode := os.Getenv(envWorkload)
	if mode == "" {
		return
	}
	err := runWorkload(mode)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runWorkload is one workload process. It stops when stdin closes (the
// test ends) or after five minutes.
func runWorkload(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	addr := workloadapi.WithAddr("unix://" + os.Getenv(envSocket))
	if mode == "fetch" {
		_, err := workloadapi.FetchX509SVID(ctx, addr)
		fmt.Println("FETCH", grpcCode(err))
		return nil
	}
	peer, err := spiffeid.FromString(os.Getenv(EnvPeer))
	if err != nil {
		return err
	}
	x509src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr))
	if err != nil {
		return fmt.Errorf("X509Source: %w", err)
	}
	defer x509src.Close()
	jwtsrc, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(addr))
	if err != nil {
		return fmt.Errorf("JWTSource: %w", err)
	}
	defer jwtsrc.Close()
	var bundles *workloadapi.BundleSource
	if os.Getenv(EnvBundles) != "" {
		if bundles, err = workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(addr)); err != nil {
			return fmt.Errorf("BundleSource: %w", err)
		}
		defer bundles.Close()
	}
	switch mode {
	case "server":
		listen := os.Getenv(EnvListen)
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		l, err := tls.Listen("tcp", listen, tlsconfig.MTLSServerConfig(x509src, x509src, tlsconfig.AuthorizeID(peer)))
		if err != nil {
			return err
		}
		fmt.Println("LISTEN", l.Addr())
		go func() { <-ctx.Done(); l.Close() }()
		for {
			c, err := l.Accept()
			if err != nil {
				return nil
			}
			go serveConn(c.(*tls.Conn), jwtsrc)
		}
	case "client":
		serverAddr := os.Getenv(EnvAddr)
		for ctx.Err() == nil {
			t0 := time.Now()
			line, err := clientRound(ctx, serverAddr, x509src, jwtsrc, bundles, peer)
			if err != nil {
				fmt.Printf("FAIL %v (after %s, at %s)\n", err, time.Since(t0).Round(time.Millisecond), t0.UTC().Format("15:04:05.000"))
			} else {
				fmt.Println("OK", line)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func grpcCode(err error) string {
	if err == nil {
		return "OK"
	}
	return status.Code(err).String()
}

// serveConn: one request per connection, a JWT-SVID for audience
// "e2e-server", checked against the JWT bundle; the answer names the
// client's JWT subject.
func serveConn(c *tls.Conn, jwtsrc *workloadapi.JWTSource) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(roundTimeout + 10*time.Second))
	if err := c.Handshake(); err != nil {
		fmt.Println("FAIL server handshake:", err)
		return
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("FAIL server read:", err)
		return
	}
	svid, err := jwtsvid.ParseAndValidate(strings.TrimSpace(line), jwtsrc, []string{"e2e-server"})
	if err != nil {
		fmt.Fprintf(c, "JWT-INVALID %v\n", err)
		fmt.Println("FAIL server JWT:", err)
		return
	}
	fmt.Fprintf(c, "JWT-OK %s\n", svid.ID)
}

// roundTimeout bounds one client round (dial, handshake, JWT, reply). It
// only stops a round that hangs: a failed verification fails at once. A
// few seconds were not enough on 2 cores at load 12+ with the race
// detector on (one round in ~1000 timed out in its handshake).
const roundTimeout = 20 * time.Second

// clientRound dials a fresh mTLS connection (a full handshake each time,
// so every rotation is exercised), sends a JWT-SVID and reports the serial,
// issuer and expiry (unix seconds) of its own SVID and of the server's, and
// the number of X.509 roots it trusts. With bundles, the server's chain is
// also verified with that BundleSource.
func clientRound(ctx context.Context, addr string, x509src *workloadapi.X509Source, jwtsrc *workloadapi.JWTSource, bundles *workloadapi.BundleSource, peer spiffeid.ID) (string, error) {
	d := tls.Dialer{Config: tlsconfig.MTLSClientConfig(x509src, x509src, tlsconfig.AuthorizeID(peer))}
	dctx, cancel := context.WithTimeout(ctx, roundTimeout)
	defer cancel()
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("handshake: %w", err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(roundTimeout))
	tok, err := cachedJWT(dctx, jwtsrc, "e2e-server")
	if err != nil {
		return "", fmt.Errorf("JWT-SVID: %w", err)
	}
	fmt.Fprintln(nc, tok.Marshal())
	reply, err := bufio.NewReader(nc).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read reply: %w", err)
	}
	if !strings.HasPrefix(reply, "JWT-OK ") {
		return "", fmt.Errorf("server: %s", strings.TrimSpace(reply))
	}
	sv, err := x509src.GetX509SVID()
	if err != nil {
		return "", err
	}
	b, err := x509src.GetX509BundleForTrustDomain(sv.ID.TrustDomain())
	if err != nil {
		return "", err
	}
	leaf := sv.Certificates[0]
	root := ""
	if len(sv.Certificates) > 1 {
		root = hex.EncodeToString(sv.Certificates[len(sv.Certificates)-1].AuthorityKeyId)
	}
	// The peer's side: its leaf (serial, issuer, expiry), the root its
	// chain names, and how many roots of its trust domain this workload
	// trusts (another domain's when federated).
	peerRoot, peerRoots, peerLeaf := "", 0, ""
	if pc := nc.(*tls.Conn).ConnectionState().PeerCertificates; len(pc) > 0 {
		peerLeaf = fmt.Sprintf(" peerserial=%s peerissuer=%s peerexp=%d", pc[0].SerialNumber.Text(16),
			hex.EncodeToString(pc[0].AuthorityKeyId), pc[0].NotAfter.Unix())
		if len(pc) > 1 {
			peerRoot = hex.EncodeToString(pc[len(pc)-1].AuthorityKeyId)
		}
	}
	if pb, err := x509src.GetX509BundleForTrustDomain(peer.TrustDomain()); err == nil {
		peerRoots = len(pb.X509Authorities())
	}
	viaBundles := ""
	if bundles != nil {
		id, _, err := x509svid.Verify(nc.(*tls.Conn).ConnectionState().PeerCertificates, bundles)
		if err != nil || id != peer {
			return "", fmt.Errorf("BundleSource: server %s: %v", id, err)
		}
		viaBundles = " bundles=ok"
	}
	return fmt.Sprintf("serial=%s issuer=%s exp=%d root=%s roots=%d peerroot=%s peerroots=%d%s%s", leaf.SerialNumber.Text(16),
		hex.EncodeToString(leaf.AuthorityKeyId), leaf.NotAfter.Unix(), root, len(b.X509Authorities()), peerRoot, peerRoots, peerLeaf, viaBundles), nil
}

// jwtCache holds the client's JWT-SVID the way a real workload would:
// fetched again past half its lifetime, and reused (while still valid) if
// the agent cannot be reached at that moment (e.g. while it restarts).
var jwtCache struct {
	mu      sync.Mutex
	tok     *jwtsvid.SVID
	fetched time.Time
}

func cachedJWT(ctx context.Context, src *workloadapi.JWTSource, aud string) (*jwtsvid.SVID, error) {
	jwtCache.mu.Lock()
	defer jwtCache.mu.Unlock()
	now := time.Now()
	if t := jwtCache.tok; t != nil && now.Before(jwtCache.fetched.Add(t.Expiry.Sub(jwtCache.fetched)/2)) {
		return t, nil
	}
	tok, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
	if err != nil {
		if t := jwtCache.tok; t != nil && now.Before(t.Expiry.Add(-5*time.Second)) {
			return t, nil
		}
		return nil, err
	}
	jwtCache.tok, jwtCache.fetched = tok, now
	return tok, nil
}

// workload is a helper child process running as uid.
type Workload struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	lines []string
}

// helperDir holds the copied helper binary; TestMain removes it.
var helperDir string

// helperBinary copies the test binary where other uids can run it (once
// per test process, shared by every test that starts workloads).
var helperBinary = sync.OnceValues(func() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "ward-e2e-helper-")
	if err != nil {
		return "", err
	}
	helperDir = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "e2e-workload")
	return p, os.WriteFile(p, b, 0o755)
})

func StartWorkload(t *testing.T, uid uint32, mode, socket string, env ...string) *Workload {
	t.Helper()
	return StartWorkloadIn(t, nil, uid, mode, socket, env...)
}

// startWorkloadIn starts a workload in network namespace nd (nil: this one).
func StartWorkloadIn(t *testing.T, nd *netns.Node, uid uint32, mode, socket string, env ...string) *Workload {
	t.Helper()
	bin, err := helperBinary()
	if err != nil {
		t.Fatal(err)
	}
	w := &Workload{cmd: otheruid.Command(uid, bin)}
	if nd != nil {
		w.cmd = nd.Command(uid, bin)
	}
	w.cmd.Env = append([]string{envWorkload + "=" + mode, envSocket + "=" + socket, "HOME=/", "PATH=/usr/bin:/bin:/usr/sbin:/sbin"}, env...)
	w.cmd.Dir = "/"
	w.stdin, _ = w.cmd.StdinPipe()
	out, _ := w.cmd.StdoutPipe()
	w.cmd.Stderr = w.cmd.Stdout
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("start workload as uid %d: %v", uid, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		w.stdin.Close()
		done := make(chan struct{})
		go func() { w.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			w.cmd.Process.Kill()
			<-done
		}
	})
	return w
}

// output returns the lines printed so far.
func (w *Workload) Output() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}

// waitLine waits (bounded) for a line with prefix and returns it.
func (w *Workload) WaitLine(t *testing.T, prefix string, after int) (string, int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		lines := w.Output()
		for i := after; i < len(lines); i++ {
			if strings.HasPrefix(lines[i], prefix) {
				return lines[i], i + 1
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("workload printed no %q line; output:\n%s", prefix, strings.Join(w.Output(), "\n"))
	return "", 0
}

// agentProc is a `ward agent` child process.
type AgentProc struct {
	t      *testing.T
	ns     *netns.Node // run in this network namespace (nil: this one)
	config string
	Cmd    *exec.Cmd
	Logs   *syncbuf.Buffer
	Socket string
	Health string
}

// PublicDir makes a directory other uids can traverse (for the socket).
func PublicDir(t *testing.T) string {
	t.Helper()
	return otheruid.PublicDir(t, "ward-e2e-agent-")
}

func startAgentProc(t *testing.T, dir, serverAddr, bundlePath, joinToken string) *AgentProc {
	t.Helper()
	return startAgentProcTD(t, "e2e.example.org", dir, serverAddr, bundlePath, joinToken)
}

// startAgentProcTD starts an agent of trust domain td.
func startAgentProcTD(t *testing.T, td, dir, serverAddr, bundlePath, joinToken string) *AgentProc {
	t.Helper()
	return StartAgentProcIn(t, nil, td, dir, serverAddr, bundlePath, joinToken)
}

// startAgentProcIn starts an agent of trust domain td in network namespace
// nd (nil: this one).
func StartAgentProcIn(t *testing.T, nd *netns.Node, td, dir, serverAddr, bundlePath, joinToken string) *AgentProc {
	t.Helper()
	return StartAgentProcExtra(t, nd, td, dir, serverAddr, bundlePath, joinToken, "")
}

// startAgentProcExtra starts an agent whose config ends with extra (YAML).
func StartAgentProcExtra(t *testing.T, nd *netns.Node, td, dir, serverAddr, bundlePath, joinToken, extra string) *AgentProc {
	t.Helper()
	a := &AgentProc{t: t, ns: nd, Socket: filepath.Join(dir, "agent.sock"), Health: netutil.FreeLoopbackAddr(t)}
	cfg := fmt.Sprintf(`trust_domain: %s
server_address: %s
trust_bundle_path: %s
join_token: %s
socket_path: %s
data_dir: %s
sync_interval: 500ms
health_address: %s
log_level: debug
%s`, td, serverAddr, bundlePath, joinToken, a.Socket, filepath.Join(dir, "agent-data"), a.Health, extra)
	a.config = filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(a.stop)
	return a
}

func (a *AgentProc) Start() {
	a.t.Helper()
	a.Logs = &syncbuf.Buffer{}
	a.Cmd = exec.Command(WardBin, "agent", "--config", a.config)
	if a.ns != nil {
		a.Cmd = a.ns.Command(0, WardBin, "agent", "--config", a.config)
	}
	a.Cmd.Stdout, a.Cmd.Stderr = a.Logs, a.Logs
	if err := a.Cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// An agent in another namespace: its health address is out of
		// reach, its Workload API socket (a file) is not.
		if _, err := a.status(); err == nil || (a.ns != nil && fileExists(a.Socket)) {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("agent did not come up; logs:\n%s", a.Logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *AgentProc) stop() { StopProcess(a.Cmd) }

// agentStatus is the subset of the agent's /status the tests read.
type AgentStatus struct {
	AgentID              string    `json:"agent_id"`
	LastError            string    `json:"last_error"`
	SecondsSinceLastSync float64   `json:"seconds_since_last_sync"`
	SVIDs                int       `json:"svids"`
	SoonestSVIDExpiry    time.Time `json:"soonest_svid_expiry"`
	AgentSVIDExpires     time.Time `json:"agent_svid_expires"`
}

func (a *AgentProc) status() (AgentStatus, error) {
	var st AgentStatus
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.Health + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitStatus polls /status (bounded) until cond holds.
func (a *AgentProc) WaitStatus(what string, cond func(AgentStatus) bool) AgentStatus {
	a.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := a.status()
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("agent never reached %s (last status %+v, err %v); logs:\n%s", what, st, err, Tail(a.Logs.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
