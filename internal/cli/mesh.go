package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/shared/atomicfile"
)

// The mesh demo (`ward server --dev --mesh DIR`, `ward dev up DIR`): the
// dev authority plus the real agent and two real proxies in the same
// process, a tiny HTTP app behind the api's proxy, and every file they run
// from written into DIR as an example to copy.

// meshMarker marks a directory the mesh demo owns: only such a directory
// (or an empty one) is cleared and written into.
const meshMarker = ".ward-mesh"

// meshKeep survive prepareMeshDir: `ward dev up` writes them before the
// mesh process starts.
var meshKeep = []string{meshMarker, "ward.log", "ward.pid"}

// prepareMeshDir creates dir or clears a previous mesh demo in it; a
// directory holding anything else is refused (nothing of the user's is
// ever deleted). The directory must be the user's own and writable by
// nobody else (a directory another user can write into could hold their
// symlinks where ward writes its marker, log and pid files, or be swapped
// for theirs); it is left readable by its owner only (0700), since it
// holds the join token, the logs and the web workload's socket, which
// speaks as that workload.
func prepareMeshDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the mesh directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("mesh directory %s: %w", dir, err)
	}
	if err := checkOwnDir(dir, fi); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("mesh directory %s: %w", dir, err)
	}
	if len(ents) > 0 {
		if fi, err := os.Lstat(filepath.Join(dir, meshMarker)); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("mesh directory %s is not empty and was not written by ward: choose a new or empty directory", dir)
		}
		for _, e := range ents {
			if !slices.Contains(meshKeep, e.Name()) {
				if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
					return fmt.Errorf("clearing the previous mesh demo in %s: %w", dir, err)
				}
			}
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("mesh directory %s: %w", dir, err)
	}
	return os.WriteFile(filepath.Join(dir, meshMarker),
		[]byte("Written by `ward server --dev --mesh` / `ward dev up`: the next run clears this directory.\n"), 0o644)
}

// checkOwnDir refuses a mesh directory that is not a directory, belongs
// to another user or is writable by group or others.
func checkOwnDir(dir string, fi os.FileInfo) error {
	if !fi.IsDir() {
		return fmt.Errorf("mesh directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("mesh directory %s belongs to uid %d, not to you (uid %d): choose a directory of your own", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("mesh directory %s is writable by other users (mode %#o): choose a new directory, or `chmod go-w` this one", dir, fi.Mode().Perm())
	}
	return nil
}

// mesh is what the demo runs and writes.
type mesh struct {
	Dir         string // absolute
	Shown       string // as the user gave it, for the printed commands
	TrustDomain string
	UID         int
	NodeAPI     string // the authority's Node API
	AdminSocket string
	AgentID     string
	WebID       string
	APIID       string
	InboundAddr string // the api's proxy: mTLS from other workloads
	AppAddr     string // the demo app behind it (appAddr)
	Policy      uint64
}

func (m *mesh) path(p ...string) string { return filepath.Join(append([]string{m.Dir}, p...)...) }

// appAddr is where the demo app listens: a unix socket in the mesh
// directory (0700), so that only the api's proxy (and this user) reach
// it. The app trusts X-Ward-Peer-Id; on a loopback port any local user
// could send it a forged one, bypassing the proxy and its policy.
func (m *mesh) appAddr() string { return "unix://" + m.path("app.sock") }

// freeLoopback picks a free 127.0.0.1 port for a config file.
func freeLoopback() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startMesh registers the demo with the running dev authority, writes
// every file into m.Dir and starts the agent, the two proxies and the app
// (stopped when ctx ends; wait returns when they have). It returns once a
// request from web reaches the api through both proxies.
func startMesh(ctx context.Context, srv *server.Server, m *mesh, logw io.Writer) (wait func(), err error) {
	m.UID = os.Getuid()
	m.AdminSocket = srv.AdminAddress()
	m.NodeAPI = srv.NodeAPIAddress()
	m.AgentID = fmt.Sprintf("spiffe://%s/ward/agent/mesh-node", m.TrustDomain)
	m.WebID = fmt.Sprintf("spiffe://%s/demo/web", m.TrustDomain)
	m.APIID = fmt.Sprintf("spiffe://%s/demo/api", m.TrustDomain)
	if m.InboundAddr, err = freeLoopback(); err != nil {
		return nil, err
	}
	m.AppAddr = m.appAddr()
	c, err := client.Dial(m.AdminSocket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.register(cctx, c); err != nil {
		return nil, fmt.Errorf("registering the mesh demo: %w", err)
	}

	// The agent and the proxies run from the files just written, exactly
	// as `ward agent --config` and `ward proxy --config` would.
	acfg, err := agent.LoadConfig(m.path("agent.yaml"))
	if err != nil {
		return nil, err
	}
	ag, err := agent.New(acfg, agent.WithLogger(newLogger(logw, acfg.LogLevel).With("component", "agent")))
	if err != nil {
		return nil, err
	}
	var proxies []*proxy.Proxy
	for _, name := range []string{"proxy-api.yaml", "proxy-web.yaml"} {
		pcfg, err := proxy.LoadConfig(m.path(name))
		if err != nil {
			return nil, err
		}
		p, err := proxy.New(pcfg, proxy.WithLogger(newLogger(logw, "warn").With("component", strings.TrimSuffix(name, ".yaml"))))
		if err != nil {
			return nil, err
		}
		proxies = append(proxies, p)
	}
	app := &http.Server{Handler: demoApp(m.APIID), ReadHeaderTimeout: 10 * time.Second}
	appL, err := net.Listen("unix", m.path("app.sock"))
	if err != nil {
		return nil, fmt.Errorf("the demo app: %w", err)
	}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	run := func(what string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", what, err)
			}
		}()
	}
	run("the demo app", func(ctx context.Context) error {
		go func() { <-ctx.Done(); app.Close() }()
		if err := app.Serve(appL); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	run("the agent", ag.Run)
	// The proxies start once the agent holds both SVIDs, so that their
	// first Workload API call is answered (not refused, then retried).
	if err := waitAgentSVIDs(ctx, ag, 2, errc); err != nil {
		return wg.Wait, err
	}
	run("the api's proxy", proxies[0].Run)
	run("the web's proxy", proxies[1].Run)
	wait = wg.Wait

	if err := m.selfCheck(ctx, errc); err != nil {
		return wait, err
	}
	return wait, m.write("README.txt", meshReadme)
}

// register writes the bundle and join token, creates the two entries
// and applies the starter policy, then writes the config files.
func (m *mesh) register(ctx context.Context, c *client.Client) error {
	b, err := c.CA.GetBundle(ctx, &wardv1.GetBundleRequest{})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.path("bundle.pem"), b.X509Pem, 0o644); err != nil {
		return err
	}
	tok, err := c.Agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{TtlSeconds: 600, AgentPath: "mesh-node"})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.path("join-token"), []byte(tok.Token+"\n"), 0o600); err != nil {
		return err
	}
	uid := fmt.Sprintf("%d", m.UID)
	for _, e := range []*wardv1.Entry{
		{SpiffeId: m.WebID, ParentId: m.AgentID, Hint: "web", Labels: map[string]string{"app": "web"},
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + uid}}},
		{SpiffeId: m.APIID, ParentId: m.AgentID, Hint: "api", Labels: map[string]string{"app": "api"},
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + uid}}},
	} {
		if _, err := c.Entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: e}); err != nil {
			return fmt.Errorf("entry %s: %w", e.SpiffeId, err)
		}
	}
	for name, tmpl := range meshFiles {
		if err := m.write(name, tmpl); err != nil {
			return err
		}
	}
	files, err := readPolicyFiles([]string{m.path("policies")})
	if err != nil {
		return err
	}
	v, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: files, Comment: "mesh demo: the starter policy"})
	if err != nil {
		return fmt.Errorf("applying %s: %w", m.path("policies"), err)
	}
	m.Policy = v.Version
	return nil
}

// render fills one of the templates below with m.
func (m *mesh) render(tmpl string) ([]byte, error) {
	var b bytes.Buffer
	err := template.Must(template.New("mesh").Parse(tmpl)).Execute(&b, m)
	return b.Bytes(), err
}

// write renders one template into the directory.
func (m *mesh) write(name, tmpl string) error {
	b, err := m.render(tmpl)
	if err != nil {
		return err
	}
	p := m.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(p, b, 0o644)
}

// selfCheck sends requests from web to the api (bounded) until one is
// answered: only then is the demo ready for the printed commands.
func (m *mesh) selfCheck(ctx context.Context, errc <-chan error) error {
	hc := meshHTTPClient(m.path("web.sock"))
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := hc.Get("http://api/hello")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the mesh demo did not answer a request from web to api (last: %s); see the agent's and proxies' log lines above", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitAgentSVIDs waits (bounded) until the agent holds n X509-SVIDs.
func waitAgentSVIDs(ctx context.Context, ag *agent.Agent, n int, errc <-chan error) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		st := ag.Status()
		if st.SVIDs >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the mesh demo's agent holds %d of its %d SVIDs after 90s (last error: %q)", st.SVIDs, n, st.LastError)
		}
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func meshHTTPClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// demoApp is the api workload's app: plain HTTP on loopback behind its
// proxy, which names the caller in X-Ward-Peer-Id.
func demoApp(self string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s to %s, over mutual TLS\n", self, r.Header.Get(proxy.HeaderPeerID))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		fl, _ := w.(http.Flusher)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for i := 1; ; i++ {
			if _, err := fmt.Fprintf(w, "stream line %d from %s to %s\n", i, self, r.Header.Get(proxy.HeaderPeerID)); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	return mux
}

// meshInstructions is printed and written to DIR/README.txt.
const meshInstructions = `Mesh demo: two workloads, web and api, talking mutual TLS under a Cedar policy.

  authority   {{.AdminSocket}}   (dev; Node API {{.NodeAPI}}, data in {{.Shown}}/authority)
  agent       {{.Shown}}/agent.yaml   ({{.AgentID}}, Workload API {{.Shown}}/agent/agent.sock)
  web         {{.WebID}}   {{.Shown}}/proxy-web.yaml: the app calls {{.Shown}}/web.sock
  api         {{.APIID}}   {{.Shown}}/proxy-api.yaml: {{.InboundAddr}} -> demo app {{.Shown}}/app.sock
  policy      {{.Shown}}/policies/connect.cedar (version {{.Policy}}); decisions in {{.Shown}}/access.log

Both entries select unix:uid:{{.UID}} (one user runs both proxies); each proxy asks for its own
SVID with spiffe_id. What ward registered, as commands: {{.Shown}}/README.txt.

    export WARD_ADDRESS={{.AdminSocket}}

1. A request from web to api through both proxies (mTLS; the app names the caller):

    curl -s --unix-socket {{.Shown}}/web.sock http://api/hello

2. Deny it with a policy (a forbid wins over the permit; curl gets an empty reply),
   then apply the starter policy again:

    ward policy apply {{.Shown}}/policies/ {{.Shown}}/deny-web.cedar
    curl -s --unix-socket {{.Shown}}/web.sock http://api/hello
    ward policy apply {{.Shown}}/policies/

3. Revoke the caller: the proxy closes web's open connection at once:

    curl -sN --unix-socket {{.Shown}}/web.sock http://api/stream &
    ward revoke --spiffe-id {{.WebID}}

Everything in {{.Shown}} is a commented example to copy into production configs.
`

// meshReadme is DIR/README.txt, written last: `ward dev up` waits for it.
const meshReadme = meshInstructions + `
What the demo did on the authority, as you would do it by hand:

    ward ca bundle -o {{.Shown}}/bundle.pem
    ward token create --ttl 10m --agent-path mesh-node -q > {{.Shown}}/join-token
    ward entry create --spiffe-id {{.WebID}} --parent {{.AgentID}} \
        --selector unix:uid:{{.UID}} --hint web --label app=web
    ward entry create --spiffe-id {{.APIID}} --parent {{.AgentID}} \
        --selector unix:uid:{{.UID}} --hint api --label app=api
    ward policy apply {{.Shown}}/policies/
    ward agent --config {{.Shown}}/agent.yaml
    ward proxy --config {{.Shown}}/proxy-api.yaml
    ward proxy --config {{.Shown}}/proxy-web.yaml
`

// meshFiles are the other files the demo writes (templates over mesh).
var meshFiles = map[string]string{
	"agent.yaml": `# The node agent of the mesh demo (every field: docs/agent.md). It attested
# with the single-use token in join-token and keeps its identity in data_dir.
trust_domain: {{.TrustDomain}}
server_address: {{.NodeAPI}}        # the authority's identity.node_api_address
trust_bundle_path: {{.Dir}}/bundle.pem   # ward ca bundle
join_token_file: {{.Dir}}/join-token     # ward token create --agent-path mesh-node
socket_path: {{.Dir}}/agent/agent.sock   # the Workload API: proxies' workload_api_socket
policy_socket: {{.Dir}}/agent/policy.sock
data_dir: {{.Dir}}/agent/data
sync_interval: 1s
telemetry_interval: 1s   # what the proxies report reaches ward drift within seconds
log_level: warn
`,
	"proxy-api.yaml": `# The api workload's proxy (every field: docs/proxy.md): it terminates mutual
# TLS with the api's SVID, decides "connect" for each caller with the policy
# the agent relays, and forwards allowed requests to the app, naming the
# caller in the X-Ward-Peer-Id header.
workload_api_socket: unix://{{.Dir}}/agent/agent.sock
spiffe_id: {{.APIID}}      # web and api share a uid: ask for this SVID
policy_socket: unix://{{.Dir}}/agent/policy.sock
access_log: {{.Dir}}/access.log
inbound:
  - name: api
    listen: {{.InboundAddr}}           # production: a routable address and allow_non_loopback: true
    forward: {{.AppAddr}}   # the app, plaintext on a socket only this user reaches (the app trusts X-Ward-Peer-Id: on a loopback port any local user could forge it)
    service: {name: api, classification: internal}   # Service::"api" in policy
    peer_identity: http-header          # none | proxy-v2 | http-header
`,
	"proxy-web.yaml": `# The web workload's proxy (every field: docs/proxy.md): the app sends plain
# HTTP to web.sock; the proxy dials the api's proxy with mutual TLS, with
# web's SVID, and accepts only a server that is exactly the api.
workload_api_socket: unix://{{.Dir}}/agent/agent.sock
spiffe_id: {{.WebID}}      # or svid_hint: web
policy_socket: unix://{{.Dir}}/agent/policy.sock   # refuses servers chained to a tainted CA key
access_log: {{.Dir}}/access.log
outbound:
  - name: to-api
    listen: unix://{{.Dir}}/web.sock   # or a loopback host:port
    remote: {{.InboundAddr}}
    server_id: {{.APIID}}
`,
	"policies/connect.cedar": `// The mesh demo's starter policy (docs/policy.md). Default deny: only what a
// permit allows connects, and a matching forbid wins.

// web may call the api.
@id("web-calls-api")
permit (
  principal == Workload::"{{.WebID}}",
  action == Action::"connect",
  resource == Service::"api"
);
`,
	"deny-web.cedar": `// Applied together with policies/ this forbid wins over the permit:
//   ward policy apply {{.Shown}}/policies/ {{.Shown}}/deny-web.cedar
@id("deny-web")
forbid (
  principal == Workload::"{{.WebID}}",
  action == Action::"connect",
  resource == Service::"api"
);
`,
}

func init() {
	register(func(root *cobra.Command) { root.AddCommand(devCommand()) }, "dev")
}

// devCommand is `ward dev up|down DIR`: the mesh demo in the background.
func devCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "A development mesh in one command: `ward dev up DIR`, then `ward dev down DIR`"}
	var td string
	up := &cobra.Command{
		Use:   "up [DIR]",
		Short: "Start a dev authority, an agent, two demo workloads' proxies and a demo app in the background; configs in DIR (default ward-mesh)",
		Long: "ward dev up runs `ward server --dev --mesh DIR` in the background (its log in DIR/ward.log) and returns\n" +
			"once a request from the demo's web workload reaches its api workload through both proxies. It prints\n" +
			"the commands to try (also in DIR/README.txt). DIR must be new, empty, or an earlier mesh demo (cleared),\n" +
			"your own and writable by nobody else; it is left readable by you only (0700).\n" +
			"Stop it with `ward dev down DIR`.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return devUp(cmd, meshArg(args), td) },
	}
	up.Flags().StringVar(&td, "trust-domain", "dev.ward.internal", "the demo's trust domain")
	down := &cobra.Command{
		Use:   "down [DIR]",
		Short: "Stop the mesh demo `ward dev up DIR` started (its files stay in DIR)",
		Args:  cobra.MaximumNArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return devDown(cmd, meshArg(args)) },
	}
	cmd.AddCommand(up, down)
	return cmd
}

func meshArg(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return "ward-mesh"
}

func devUp(cmd *cobra.Command, dir, td string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if pid, ok := meshRunning(abs); ok {
		return fmt.Errorf("a mesh demo already runs in %s (pid %d): `ward dev down %s` first", dir, pid, dir)
	}
	if err := prepareMeshDir(abs); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(abs, "ward.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	child := exec.Command(self, "server", "--dev", "--mesh", dir, "--trust-domain", td)
	child.Stdout, child.Stderr = logf, logf
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this shell's Ctrl-C
	if err := child.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(abs, "ward.pid"), fmt.Appendf(nil, "%d\n", child.Process.Pid), 0o644); err != nil {
		child.Process.Kill()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	readme := filepath.Join(abs, "README.txt")
	deadline := time.After(3 * time.Minute)
	for {
		if b, err := os.ReadFile(readme); err == nil {
			_, err := cmd.OutOrStdout().Write(b)
			fmt.Fprintf(cmd.OutOrStdout(), "\nLogs: %s. Stop it with: ward dev down %s\n", filepath.Join(dir, "ward.log"), dir)
			return err
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(abs, "ward.log"))
			return fmt.Errorf("the mesh demo stopped (%v); its log (%s):\n%s", err, filepath.Join(dir, "ward.log"), log)
		case <-deadline:
			child.Process.Signal(syscall.SIGTERM)
			return fmt.Errorf("the mesh demo was not ready within 3 minutes; stopped it. Its log: %s", filepath.Join(dir, "ward.log"))
		case <-cmd.Context().Done():
			child.Process.Signal(syscall.SIGTERM)
			return cmd.Context().Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// meshRunning reports the pid of a mesh demo running for dir, from
// dir/ward.pid, if that process is still a `ward server --dev --mesh`.
func meshRunning(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "ward.pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cl, []byte("\x00--mesh\x00")) {
		return 0, false
	}
	return pid, true
}

func devDown(cmd *cobra.Command, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(abs); err == nil {
		// ward.pid names the process to signal: only from a directory
		// nobody else can write into.
		if err := checkOwnDir(dir, fi); err != nil {
			return err
		}
	}
	pid, ok := meshRunning(abs)
	if !ok {
		fmt.Fprintf(cmd.OutOrStdout(), "No mesh demo runs in %s.\n", dir)
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping the mesh demo (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := meshRunning(abs); !ok {
			os.Remove(filepath.Join(abs, "ward.pid"))
			fmt.Fprintf(cmd.OutOrStdout(), "Mesh demo in %s stopped; its files stay there.\n", dir)
			return nil
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			return fmt.Errorf("the mesh demo (pid %d) did not stop within 30s after SIGTERM; killed it", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
