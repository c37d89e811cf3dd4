// Package e2e runs the real ward binary: servers as child processes, the
// CLI as a user would type it, faults by SIGKILL. Nothing here reaches
// beyond loopback and the test's temporary directories.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

func TestMain(m *testing.M) {
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
