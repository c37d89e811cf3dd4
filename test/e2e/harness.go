// Package e2e runs the real ward binary: servers as child processes, the
// CLI as a user would type it, faults by SIGKILL. Its non-test files are the
// harness its tests and those of test/e2e/etcd and test/e2e/multicluster
// share (each package's TestMain calls Main); the tests of one authority
// are its own. Nothing here reaches beyond loopback, the test's network
// namespaces and its temporary directories.
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

var WardBin string

// Main runs the tests of an e2e package (its TestMain calls it): it builds
// the ward binary the tests run once, and removes what the harness made.
// With WARD_E2E_BIN set (scripts/test.sh builds it once for the three e2e
// packages) it runs that binary instead of building its own.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "ward-e2e-bin-")
	if err != nil {
		panic(err)
	}
	WardBin = os.Getenv("WARD_E2E_BIN")
	if WardBin == "" {
		WardBin = filepath.Join(dir, "ward")
		build := exec.Command("go", "build", "-o", WardBin, "github.com/wardproject/ward/cmd/ward")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building ward:", err)
			os.Exit(1)
		}
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
	Stdout, Stderr string
	Code           int
}

// ward runs the CLI with args against addr, feeding stdin.
func Ward(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, WardBin, args...)
	cmd.Env = append(os.Environ(), "WARD_ADDRESS="+addr, "WARD_STATE_DIR="+StateDirFor(addr))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running ward %v: %v", args, err)
	}
	return r
}

// mustWard runs the CLI and fails the test on a non-zero exit.
func MustWard(t *testing.T, addr, stdin string, args ...string) string {
	t.Helper()
	r := Ward(t, addr, stdin, args...)
	if r.Code != 0 {
		t.Fatalf("ward %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// server is a ward server child process.
type Server struct {
	t      *testing.T
	ns     *netns.Node // run in this network namespace (nil: this one)
	Dir    string
	config string
	cmd    *exec.Cmd
	Logs   *syncbuf.Buffer
	Addr   string
}

// writeConfig writes a bbolt + shamir config into dir and returns its path.
func WriteConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf("trust_domain: e2e.example.org\ndata_dir: %s\nhttp_address: 127.0.0.1:0\nlog_level: info\n%s", dir, extra)
	p := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func StartServer(t *testing.T, dir, configPath string) *Server {
	t.Helper()
	return StartServerIn(t, nil, dir, configPath)
}

// startServerIn starts `ward server` in network namespace nd (nil: this
// one); its admin socket is a file, reachable from here.
func StartServerIn(t *testing.T, nd *netns.Node, dir, configPath string) *Server {
	t.Helper()
	s := &Server{t: t, ns: nd, Dir: dir, config: configPath, Addr: "unix://" + filepath.Join(dir, "admin.sock")}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) Start() {
	s.t.Helper()
	s.Logs = &syncbuf.Buffer{}
	s.cmd = exec.Command(WardBin, "server", "--config", s.config)
	if s.ns != nil {
		s.cmd = s.ns.Command(0, WardBin, "server", "--config", s.config)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.Logs, s.Logs
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.waitUp()
}

// waitUp polls the admin socket until the server answers (bounded).
func (s *Server) waitUp() {
	s.t.Helper()
	c, err := client.Dial(s.Addr)
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
			s.t.Fatalf("server did not come up: %v\nlogs:\n%s", err, s.Logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) Stop() { StopProcess(s.cmd) }

// stopProcess sends SIGTERM and waits (bounded), then kills.
func StopProcess(cmd *exec.Cmd) {
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

func (s *Server) Kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

func (s *Server) Client() *client.Client {
	s.t.Helper()
	c, err := client.Dial(s.Addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// initAndUnseal initialises with 5/3 shares and unseals; returns shares.
func (s *Server) InitAndUnseal() []string {
	s.t.Helper()
	out := MustWard(s.t, s.Addr, "", "operator", "init", "--shares", "5", "--threshold", "3")
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
	s.Unseal(shares[:3])
	return shares
}

func (s *Server) Unseal(shares []string) {
	s.t.Helper()
	for _, sh := range shares {
		MustWard(s.t, s.Addr, sh+"\n", "operator", "unseal")
	}
}

// `ward audit verify` remembers checkpoints; keep the e2e runs out of the
// user's ~/.local/state. The CLI remembers each origin's signing key and
// every test's authority has the same trust domain but its own key, so
// each admin address gets its own directory under this one (StateDirFor).
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

// StateDirFor is the WARD_STATE_DIR the harness gives the CLI for the
// authority at addr: one per authority, since they all share a trust
// domain (so an origin) but each has its own audit signing key.
func StateDirFor(addr string) string {
	h := sha256.Sum256([]byte(addr))
	return filepath.Join(os.Getenv("WARD_STATE_DIR"), hex.EncodeToString(h[:8]))
}

// fields parses "OK k=v k=v" lines.
func Fields(line string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

// waitClient waits (bounded by the SVID TTL) for an OK line satisfying cond.
func WaitClient(t *testing.T, w *Workload, from int, cond func(map[string]string) bool) (string, int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		lines := w.Output()
		for i := from; i < len(lines); i++ {
			if strings.HasPrefix(lines[i], "OK ") && cond(Fields(lines[i])) {
				return lines[i], i + 1
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	lines := w.Output()
	t.Fatalf("client never reached the expected state; last lines:\n%s", strings.Join(lines[max(0, len(lines)-5):], "\n"))
	return "", 0
}

func GrepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func HTTPAddr(t *testing.T, s *Server) string {
	t.Helper()
	m := regexp.MustCompile(`"http":"([^"]+)"`).FindStringSubmatch(s.Logs.String())
	if m == nil {
		t.Fatalf("no http address in logs:\n%s", s.Logs.String())
	}
	return m[1]
}

func HTTPGet(t *testing.T, s *Server, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + HTTPAddr(t, s) + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func httpStatus(t *testing.T, s *Server, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + HTTPAddr(t, s) + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
