// Package etcdtest starts a real etcd server process for tests: one member
// on free loopback ports with its data in t.TempDir(), plaintext or mutual
// TLS with a throwaway CA, killed when the test ends.
//
// It looks for the binary as "etcd" on PATH, then /usr/bin/etcd (Debian:
// apt-get install etcd-server). If it is missing the test is skipped, except
// when CI=true, where a missing etcd fails the test: CI never skips silently.
package etcdtest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
)

// startTimeout bounds the wait for a started etcd to report healthy.
const startTimeout = 30 * time.Second

type config struct {
	tls bool
}

// Option configures Start.
type Option func(*config)

// WithTLS serves clients over mutual TLS: a fresh CA signs a server
// certificate for 127.0.0.1 and a client certificate, and etcd runs with
// --client-cert-auth. Use Server.ClientTLS or Server.ClientCertFiles.
func WithTLS() Option { return func(c *config) { c.tls = true } }

// Server is one running etcd member.
type Server struct {
	endpoint  string
	clientTLS *tls.Config
	files     certFiles
	cmd       *exec.Cmd
	exited    chan struct{}
	logPath   string
	stopOnce  sync.Once
}

type certFiles struct{ ca, cert, key, serverCert, serverKey string }

// Binary returns the path of the etcd binary, or an error saying how to
// install it.
func Binary() (string, error) {
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if st, err := os.Stat("/usr/bin/etcd"); err == nil && !st.IsDir() {
		return "/usr/bin/etcd", nil
	}
	return "", errors.New("etcd binary not found on PATH or at /usr/bin/etcd; install it with `apt-get install etcd-server`")
}

// Start runs an etcd member and waits until it is healthy. It skips the
// test if etcd is not installed (fails it if CI=true).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	bin := binaryOrSkip(t)
	dir := t.TempDir()
	s := &Server{}
	if c.tls {
		var err error
		s.clientTLS, s.files, err = writeCerts(dir)
		if err != nil {
			t.Fatalf("etcdtest: generate TLS certificates: %v", err)
		}
	}
	// A free port can be taken between probing and etcd binding it; retry.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if lastErr = s.start(t, bin, filepath.Join(dir, "run"+strconv.Itoa(attempt)), c); lastErr == nil {
			return s
		}
		s.Stop()
		s.stopOnce = sync.Once{}
	}
	t.Fatalf("etcdtest: %v", lastErr)
	return nil
}

func (s *Server) start(t testing.TB, bin, dir string, c config) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	ports, err := netutil.FreeLoopbackPorts(2)
	if err != nil {
		return fmt.Errorf("find free loopback ports: %w", err)
	}
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	s.endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	args := []string{
		"--name", "etcdtest",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", s.endpoint,
		"--advertise-client-urls", s.endpoint,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "etcdtest=" + peer,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}
	if c.tls {
		args = append(args,
			"--cert-file", s.files.serverCert, "--key-file", s.files.serverKey,
			"--trusted-ca-file", s.files.ca, "--client-cert-auth")
	}
	s.logPath = filepath.Join(dir, "etcd.log")
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if runtime.GOARCH != "amd64" {
		// etcd 3.4 refuses to start on other architectures without this.
		cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	}
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.Stop)

	hc := &http.Client{Timeout: time.Second}
	if s.clientTLS != nil {
		hc.Transport = &http.Transport{TLSClientConfig: s.ClientTLS()}
	}
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); {
		select {
		case <-s.exited:
			return fmt.Errorf("etcd exited during startup (%v); log:\n%s", cmd.ProcessState, s.logTail())
		default:
		}
		if resp, err := hc.Get(s.endpoint + "/health"); err == nil {
			body := make([]byte, 256)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body[:n], []byte(`"health":"true"`)) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("etcd at %s not healthy within %s; log:\n%s", s.endpoint, startTimeout, s.logTail())
}

// Endpoints returns the client URLs ("http://127.0.0.1:port" or https).
func (s *Server) Endpoints() []string { return []string{s.endpoint} }

// ClientTLS returns a client TLS configuration (CA pool and client
// certificate) for a WithTLS server, or nil for a plaintext one.
func (s *Server) ClientTLS() *tls.Config {
	if s.clientTLS == nil {
		return nil
	}
	return s.clientTLS.Clone()
}

// ClientCertFiles returns the PEM files of the CA and the client
// certificate and key for a WithTLS server ("" for a plaintext one).
func (s *Server) ClientCertFiles() (caFile, certFile, keyFile string) {
	return s.files.ca, s.files.cert, s.files.key
}

// Stop kills the server and waits for it to exit. It is safe to call more
// than once; Start registers it with t.Cleanup.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		s.cmd.Process.Kill()
		<-s.exited
	})
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// binaryOrSkip returns the etcd binary, or skips t without one (fails it
// under CI=true, where a missing etcd is a missing install step).
func binaryOrSkip(t testing.TB) string {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcdtest: %v (CI=true: refusing to skip)", err)
		}
		t.Skipf("etcdtest: %v", err)
	}
	return bin
}
