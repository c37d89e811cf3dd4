// Package k8s holds ward's tests against Kubernetes code nobody here
// wrote: the apiserver's own KMS v2 client and envelope transformer, and a
// real kube-apiserver (built from its Go modules by
// scripts/kube-apiserver.sh) over a real etcd. It is a module of its own
// so Kubernetes stays out of ward's go.mod; scripts/test.sh runs it.
package k8s

import (
	"bytes"
	"context"

	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

var wardBin string

func TestMain(m *testing.M) {
	if socket := os.Getenv(fetchEnv); socket != "" {
		fetchMain(socket) // a workload of TestPodIdentityWithRealAPIServer
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "ward-k8s-bin-")
	if err != nil {
		panic(err)
	}
	wardBin = filepath.Join(dir, "ward")
	// Built in ward's own module (its go.mod, not this one's).
	build := exec.Command("go", "build", "-o", wardBin, "./cmd/ward")
	build.Dir = filepath.Join("..", "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ward:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// authority is a configured `ward server` (bbolt, Shamir 2 of 2) child.
type authority struct {
	t      testing.TB
	addr   string
	shares []string
	state  string // the CLI's state dir (audit checkpoints), one per authority
	logs   *syncbuf.Buffer
	cmd    *exec.Cmd
}

func startAuthority(t testing.TB, dir string, extraConfig ...string) *authority {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("trust_domain: k8s.example.org\ndata_dir: %s\nhttp_address: 127.0.0.1:0\nlog_level: warn\n%s", dir, strings.Join(extraConfig, ""))
	path := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &authority{t: t, addr: "unix://" + filepath.Join(dir, "admin.sock"), state: filepath.Join(dir, "cli-state"), logs: &syncbuf.Buffer{}}
	a.cmd = exec.Command(wardBin, "server", "--config", path)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(a.cmd) })
	c, err := client.Dial(a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Operator.Status(ctx, &wardv1.StatusRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ward server did not come up: %v\n%s", err, a.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := a.ward("", "operator", "init", "--shares", "2", "--threshold", "2")
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Unseal share "); ok {
			_, sh, _ := strings.Cut(v, ": ")
			a.shares = append(a.shares, strings.TrimSpace(sh))
		}
	}
	if len(a.shares) != 2 {
		t.Fatalf("no unseal share in:\n%s", out)
	}
	a.unseal()
	return a
}

func (a *authority) unseal() {
	for _, sh := range a.shares {
		a.ward(sh+"\n", "operator", "unseal")
	}
}
func (a *authority) seal() { a.ward("", "operator", "seal") }

// ward runs the CLI against the authority and fails the test on error.
func (a *authority) ward(stdin string, args ...string) string {
	a.t.Helper()
	out, err := a.wardErr(stdin, args...)
	if err != nil {
		a.t.Fatalf("ward %s: %v\nstdout: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// wardErr runs the CLI against the authority; the error carries stderr.
func (a *authority) wardErr(stdin string, args ...string) (string, error) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, wardBin, args...)
	// Each test authority is new under the same trust domain: its audit
	// checkpoints go to its own state dir, never the user's.
	cmd.Env = append(os.Environ(), "WARD_ADDRESS="+a.addr, "WARD_STATE_DIR="+a.state)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%w; stderr: %s", err, errb.String())
	}
	return out.String(), nil
}

// plugin is a `ward kms-plugin` child serving on socket.
type plugin struct {
	socket string
	logs   *syncbuf.Buffer
	cmd    *exec.Cmd
}

// startPlugin writes a configuration (health_ttl 1s, so tests see a
// rotation or a seal quickly) and starts the plugin.
func startPlugin(t testing.TB, a *authority, dir, key, cluster string) *plugin {
	t.Helper()
	return startPluginWith(t, a, dir, key, cluster, fmt.Sprintf("authority:\n  address: %s\n", a.addr))
}

// startPluginWith is startPlugin with the configuration's authority
// section (the mode: admin socket or mTLS).
func startPluginWith(t testing.TB, a *authority, dir, key, cluster, authoritySection string) *plugin {
	t.Helper()
	p := &plugin{socket: filepath.Join(dir, "kms.sock"), logs: &syncbuf.Buffer{}}
	cfg := fmt.Sprintf("socket: %s\ncluster: %s\nkey: %s\nhealth_ttl: 1s\n%s", p.socket, cluster, key, authoritySection)
	path := filepath.Join(dir, "kms-plugin.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.ward("", "kms-plugin", "--config", path, "--check")
	p.cmd = exec.Command(wardBin, "kms-plugin", "--config", path)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(p.cmd) })
	deadline := time.Now().Add(30 * time.Second)
	for !p.logs.Contains("serving KMS v2") {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			t.Fatalf("kms-plugin did not come up:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := os.Stat(p.socket)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("plugin socket: %v, mode %v", err, st.Mode())
	}
	return p
}

// kmsClient dials the plugin with the KMS v2 client from k8s.io/kms.
func (p *plugin) kmsClient(t testing.TB) kmsapi.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

// waitStatus polls the plugin's Status until ok(healthz, keyID) holds.
func waitStatus(t testing.TB, c kmsapi.KeyManagementServiceClient, what string, ok func(healthz, keyID string) bool) *kmsapi.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last *kmsapi.StatusResponse
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, lastErr = c.Status(ctx, &kmsapi.StatusRequest{})
		cancel()
		if lastErr == nil && ok(last.Healthz, last.KeyId) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("plugin Status never showed %s: last %v, %v", what, last, lastErr)
	return nil
}

// stop sends SIGTERM and waits (bounded), then kills.
func stop(cmd *exec.Cmd) {
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
