package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/proxyproto"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/proxytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

const (
	tdName = "prod.example"
	webID  = "spiffe://prod.example/ns/shop/web"
	toolID = "spiffe://prod.example/ns/ops/tool"
	apiID  = "spiffe://prod.example/ns/shop/api"
	apiDNS = "api.prod.example" // DNS SAN of the server's SVID, for curl
)

const basePolicy = `
@id("web-to-api")
permit (principal == Workload::"spiffe://prod.example/ns/shop/web", action == Action::"connect", resource == Service::"api");

@id("ops-may-not-connect")
forbid (principal, action == Action::"connect", resource)
when { principal.path like "/ns/ops/*" };
`

// findLog returns the JSON access-log lines in log whose field k equals v.
func findLog(log *syncbuf.Buffer, k, v string) []map[string]any {
	var out []map[string]any
	for _, m := range log.JSONLines() {
		if fmt.Sprint(m[k]) == v {
			out = append(out, m)
		}
	}
	return out
}

// echoApp is the app behind the server proxy: it reads an optional PROXY
// v2 header, then echoes lines prefixed with the caller's SPIFFE ID.
type echoApp struct {
	l     net.Listener
	proxy bool
	mu    sync.Mutex
	peers map[string]int // SPIFFE ID from the PROXY header -> connections
}

func newEchoApp(t testing.TB, proxyV2 bool) *echoApp {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &echoApp{l: l, proxy: proxyV2, peers: map[string]int{}}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go a.serve(c)
		}
	}()
	return a
}

func (a *echoApp) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	peer := "-"
	if a.proxy {
		h, err := proxyproto.ReadV2(r)
		if err != nil {
			fmt.Fprintf(c, "bad proxy header: %v\n", err)
			return
		}
		peer = h.SPIFFEID()
	}
	a.mu.Lock()
	a.peers[peer]++
	a.mu.Unlock()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%s %s", peer, line); err != nil {
			return
		}
	}
}

func (a *echoApp) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peers[id]
}

// env is an authority, three workloads on their own Workload API sockets,
// an echo app and a server proxy in front of it, and one client proxy per
// client identity.
type env struct {
	t         testing.TB
	dir       string
	auth      *proxytest.Authority
	api       *proxytest.Workload
	web, tool *proxytest.Workload
	app       *echoApp
	policyDir string
	denyFile  string

	server     *proxy.Proxy
	serverLog  *syncbuf.Buffer
	clientWeb  *proxy.Proxy
	clientLog  *syncbuf.Buffer
	clientTool *proxy.Proxy
	stopServer context.CancelFunc
	serverDone chan error
	mutateCfg  func(*proxy.Config)
	clientTLS  proxy.TLSConfig // of the client proxies
	svidTTL    time.Duration
}

type envOpt func(*env)

func withConfig(f func(*proxy.Config)) envOpt { return func(e *env) { e.mutateCfg = f } }
func withTTL(d time.Duration) envOpt          { return func(e *env) { e.svidTTL = d } }
func withClientTLS(c proxy.TLSConfig) envOpt  { return func(e *env) { e.clientTLS = c } }

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "wp") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir}
	for _, o := range opts {
		o(e)
	}
	e.auth, err = proxytest.NewAuthority(ctx, dir, tdName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.auth.Close() })
	add := func(path string, dns ...string) *proxytest.Workload {
		w, err := e.auth.AddWorkload(ctx, path, e.svidTTL, dns...)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	e.api, e.web, e.tool = add("/ns/shop/api", apiDNS), add("/ns/shop/web"), add("/ns/ops/tool")
	e.policyDir = filepath.Join(dir, "policy")
	if err := os.Mkdir(e.policyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.writePolicy(basePolicy)
	e.denyFile = filepath.Join(dir, "deny.json")
	e.writeDeny(`{}`)

	proxyV2 := true
	cfg := &proxy.Config{
		WorkloadAPISocket:  e.api.Addr,
		AdminAddress:       "127.0.0.1:0",
		PolicyFiles:        []string{e.policyDir},
		DenyListFile:       e.denyFile,
		PolicyPollInterval: cfgDur(100 * time.Millisecond),
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: "", PeerIdentity: proxy.PeerIdentityProxyV2,
			Service: proxy.Service{Name: "api", Port: 8443, Classification: "internal"}}},
	}
	if e.mutateCfg != nil {
		e.mutateCfg(cfg)
		proxyV2 = cfg.Inbound[0].PeerIdentity == proxy.PeerIdentityProxyV2
	}
	e.app = newEchoApp(t, proxyV2)
	if cfg.Inbound[0].Forward == "" {
		cfg.Inbound[0].Forward = e.app.l.Addr().String()
	}
	e.serverLog = &syncbuf.Buffer{}
	var sctx context.Context
	sctx, e.stopServer = context.WithCancel(ctx)
	e.server, e.serverDone = startProxy(t, sctx, cfg, proxy.WithAccessLog(e.serverLog))
	// The policy source loads its first version beside the listeners
	// (Run): a first request may otherwise be decided with no policy yet
	// (fail closed) on a loaded machine. The env wrote a valid one.
	waitFor(t, "the server proxy's first policy version", 10*time.Second, func() bool { _, ok := e.server.Engine().Status(); return ok })
	e.clientLog = &syncbuf.Buffer{}
	e.clientWeb = e.clientProxy(ctx, e.web, e.clientLog)
	e.clientTool = e.clientProxy(ctx, e.tool, io.Discard)
	return e
}

func cfgDur(d time.Duration) yamlconf.Duration { return yamlconf.Duration(d) }

func (e *env) clientProxy(ctx context.Context, w *proxytest.Workload, log io.Writer) *proxy.Proxy {
	cfg := &proxy.Config{
		WorkloadAPISocket: w.Addr,
		TLS:               e.clientTLS,
		Outbound: []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0",
			Remote: e.server.Addr("api").String(), ServerID: apiID}},
	}
	p, _ := startProxy(e.t, ctx, cfg, proxy.WithAccessLog(log))
	return p
}

// startProxy defaults, validates and runs cfg until ctx ends.
func startProxy(t testing.TB, ctx context.Context, cfg *proxy.Config, opts ...proxy.Option) (*proxy.Proxy, chan error) {
	t.Helper()
	opts = append([]proxy.Option{proxy.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	p, err := proxy.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Started():
	case err := <-done:
		t.Fatalf("proxy stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("proxy did not start")
	}
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
	})
	return p, done
}

func (e *env) writePolicy(src string) {
	e.t.Helper()
	writeAtomic(e.t, filepath.Join(e.policyDir, "main.cedar"), src)
}

func (e *env) writeDeny(src string) {
	e.t.Helper()
	writeAtomic(e.t, e.denyFile, src)
}

func writeAtomic(t testing.TB, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// dialVia connects through a client proxy's outbound listener.
func dialVia(p *proxy.Proxy) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", p.Addr("to-api").String())
	if err != nil {
		return nil, nil, err
	}
	return c, bufio.NewReader(c), nil
}

// roundTrip sends msg and reads the echo.
func roundTrip(c net.Conn, r *bufio.Reader, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// request opens a fresh connection through p, exchanges one message and
// closes it.
func request(p *proxy.Proxy, msg string) (string, error) {
	c, r, err := dialVia(p)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return roundTrip(c, r, msg)
}

// metric scrapes the admin endpoint and sums the samples of name whose
// labels contain every label pair in match (e.g. `result="deny"`).
func metric(t testing.TB, p *proxy.Proxy, name string, match ...string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+p.Addr("admin").String()+"/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			if !strings.Contains(line, m) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		var v float64
		fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
		sum += v
	}
	return sum
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	_, body := httpGetStatus(t, url)
	return body
}

func httpGetStatus(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if err := proxytest.WaitFor(d, cond); err != nil {
		t.Fatalf("%s: not reached within %s", what, d)
	}
}
