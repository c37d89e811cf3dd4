// Package e2e runs the real ward binary: servers as child processes, the
// CLI as a user would type it, faults by SIGKILL. Nothing here reaches
// beyond loopback and the test's temporary directories.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/testutil/netns"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

var wardBin string

// Main runs the tests of an e2e package (its TestMain calls it): it builds
// the ward binary the tests run once, and removes what the harness made.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "ward-e2e-bin-")
	if err != nil {
		panic(err)
	}
	wardBin = filepath.Join(dir, "ward")
	build := exec.Command("go", "build", "-o", wardBin, "github.com/wardproject/ward/cmd/ward")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ward:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if helperDir != "" {
		os.RemoveAll(helperDir)
	}
	if e2eStateDir != "" {
		os.RemoveAll(e2eStateDir)
	}
	os.Exit(code)
}

// result of one CLI run.
type result struct {
	stdout, stderr string
	code           int
}

// ward runs the CLI with args against addr, feeding stdin.
func ward(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wardBin, args...)
	cmd.Env = append(os.Environ(), "WARD_ADDRESS="+addr, "WARD_STATE_DIR="+stateDirFor(addr))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running ward %v: %v", args, err)
	}
	return r
}

// mustWard runs the CLI and fails the test on a non-zero exit.
func mustWard(t *testing.T, addr, stdin string, args ...string) string {
	t.Helper()
	r := ward(t, addr, stdin, args...)
	if r.code != 0 {
		t.Fatalf("ward %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// server is a ward server child process.
type server struct {
	t      *testing.T
	ns     *netns.Node // run in this network namespace (nil: this one)
	dir    string
	config string
	cmd    *exec.Cmd
	logs   *syncbuf.Buffer
	addr   string
}

// writeConfig writes a bbolt + shamir config into dir and returns its path.
func writeConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf("trust_domain: e2e.example.org\ndata_dir: %s\nhttp_address: 127.0.0.1:0\nlog_level: info\n%s", dir, extra)
	p := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func startServer(t *testing.T, dir, configPath string) *server {
	t.Helper()
	return startServerIn(t, nil, dir, configPath)
}

// startServerIn starts `ward server` in network namespace nd (nil: this
// one); its admin socket is a file, reachable from here.
func startServerIn(t *testing.T, nd *netns.Node, dir, configPath string) *server {
	t.Helper()
	s := &server{t: t, ns: nd, dir: dir, config: configPath, addr: "unix://" + filepath.Join(dir, "admin.sock")}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	s.t.Helper()
	s.logs = &syncbuf.Buffer{}
	s.cmd = exec.Command(wardBin, "server", "--config", s.config)
	if s.ns != nil {
		s.cmd = s.ns.Command(0, wardBin, "server", "--config", s.config)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.waitUp()
}

// waitUp polls the admin socket until the server answers (bounded).
func (s *server) waitUp() {
	s.t.Helper()
	c, err := client.Dial(s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Operator.Status(ctx, &wardv1.StatusRequest{})
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("server did not come up: %v\nlogs:\n%s", err, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) stop() { stopProcess(s.cmd) }

// stopProcess sends SIGTERM and waits (bounded), then kills.
func stopProcess(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

func (s *server) client() *client.Client {
	s.t.Helper()
	c, err := client.Dial(s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// initAndUnseal initialises with 5/3 shares and unseals; returns shares.
func (s *server) initAndUnseal() []string {
	s.t.Helper()
	out := mustWard(s.t, s.addr, "", "operator", "init", "--shares", "5", "--threshold", "3")
	var shares []string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Unseal share "); ok {
			_, sh, _ := strings.Cut(v, ": ")
			shares = append(shares, strings.TrimSpace(sh))
		}
	}
	if len(shares) != 5 {
		s.t.Fatalf("want 5 shares in init output, got %d:\n%s", len(shares), out)
	}
	s.unseal(shares[:3])
	return shares
}

func (s *server) unseal(shares []string) {
	s.t.Helper()
	for _, sh := range shares {
		mustWard(s.t, s.addr, sh+"\n", "operator", "unseal")
	}
}

// `ward audit verify` remembers checkpoints; keep the e2e runs out of the
// user's ~/.local/state. The CLI remembers each origin's signing key and
// every test's authority has the same trust domain but its own key, so
// each admin address gets its own directory under this one (stateDirFor).
// TestMain removes the directory (e2eStateDir) after the run.
func init() {
	if os.Getenv("WARD_STATE_DIR") == "" {
		if d, err := os.MkdirTemp("", "ward-e2e-state-"); err == nil {
			os.Setenv("WARD_STATE_DIR", d)
			e2eStateDir = d
		}
	}
}

// e2eStateDir is the state directory init made, if it made one.
var e2eStateDir string

// stateDirFor is the WARD_STATE_DIR the harness gives the CLI for the
// authority at addr: one per authority, since they all share a trust
// domain (so an origin) but each has its own audit signing key.
func stateDirFor(addr string) string {
	h := sha256.Sum256([]byte(addr))
	return filepath.Join(os.Getenv("WARD_STATE_DIR"), hex.EncodeToString(h[:8]))
}

// fields parses "OK k=v k=v" lines.
func fields(line string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

// waitClient waits (bounded by the SVID TTL) for an OK line satisfying cond.
func waitClient(t *testing.T, w *workload, from int, cond func(map[string]string) bool) (string, int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		lines := w.output()
		for i := from; i < len(lines); i++ {
			if strings.HasPrefix(lines[i], "OK ") && cond(fields(lines[i])) {
				return lines[i], i + 1
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	lines := w.output()
	t.Fatalf("client never reached the expected state; last lines:\n%s", strings.Join(lines[max(0, len(lines)-5):], "\n"))
	return "", 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func httpAddr(t *testing.T, s *server) string {
	t.Helper()
	m := regexp.MustCompile(`"http":"([^"]+)"`).FindStringSubmatch(s.logs.String())
	if m == nil {
		t.Fatalf("no http address in logs:\n%s", s.logs.String())
	}
	return m[1]
}

func httpGet(t *testing.T, s *server, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr(t, s) + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func httpStatus(t *testing.T, s *server, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr(t, s) + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
