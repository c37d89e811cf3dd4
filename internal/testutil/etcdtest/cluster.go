package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
)

// ClusterOption configures StartCluster.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	tls     bool
	hosts   []string
	command func(i int, bin string, args ...string) *exec.Cmd
	dial    func(i int) func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ClusterTLS serves clients and peers over mutual TLS (one throwaway CA;
// the server certificate, also the peer certificate, names every member's
// host).
func ClusterTLS() ClusterOption { return func(c *clusterConfig) { c.tls = true } }

// ClusterHosts gives member i the IP address hosts[i] (default 127.0.0.1,
// each member on its own ports), for members in network namespaces.
func ClusterHosts(hosts ...string) ClusterOption { return func(c *clusterConfig) { c.hosts = hosts } }

// ClusterCommand runs member i with cmd(i, bin, args...) instead of
// exec.Command(bin, args...) (for instance inside a network namespace),
// and dial(i) connects to it for the health check.
func ClusterCommand(cmd func(i int, bin string, args ...string) *exec.Cmd, dial func(i int) func(ctx context.Context, network, addr string) (net.Conn, error)) ClusterOption {
	return func(c *clusterConfig) { c.command, c.dial = cmd, dial }
}

// Cluster is a running etcd cluster of several members.
type Cluster struct {
	Members   []*Server
	clientTLS *tls.Config
	files     certFiles
}

// StartCluster runs an n-member etcd cluster and waits until every member
// is healthy. Like Start it skips the test when etcd is missing (fails it
// under CI=true).
func StartCluster(t testing.TB, n int, opts ...ClusterOption) *Cluster {
	t.Helper()
	var c clusterConfig
	for _, o := range opts {
		o(&c)
	}
	bin := binaryOrSkip(t)
	dir := t.TempDir()
	cl := &Cluster{}
	hosts := make([]string, n)
	var ips []net.IP
	for i := range hosts {
		hosts[i] = "127.0.0.1"
		if i < len(c.hosts) {
			hosts[i] = c.hosts[i]
			if ip := net.ParseIP(hosts[i]); ip != nil {
				ips = append(ips, ip)
			}
		}
	}
	if c.tls {
		var err error
		if cl.clientTLS, cl.files, err = writeCerts(dir, ips...); err != nil {
			t.Fatalf("etcdtest: generate TLS certificates: %v", err)
		}
	}
	ports, err := netutil.FreeLoopbackPorts(2 * n)
	if err != nil {
		t.Fatalf("etcdtest: free ports: %v", err)
	}
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	var initial []string
	clientURL := make([]string, n)
	peerURL := make([]string, n)
	for i := range n {
		clientURL[i] = fmt.Sprintf("%s://%s:%d", scheme, hosts[i], ports[2*i])
		peerURL[i] = fmt.Sprintf("%s://%s:%d", scheme, hosts[i], ports[2*i+1])
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peerURL[i]))
	}
	for i := range n {
		mdir := filepath.Join(dir, fmt.Sprintf("m%d", i))
		if err := os.Mkdir(mdir, 0o700); err != nil {
			t.Fatal(err)
		}
		args := []string{
			"--name", fmt.Sprintf("m%d", i),
			"--data-dir", filepath.Join(mdir, "data"),
			"--listen-client-urls", clientURL[i],
			"--advertise-client-urls", clientURL[i],
			"--listen-peer-urls", peerURL[i],
			"--initial-advertise-peer-urls", peerURL[i],
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(dir),
			"--heartbeat-interval", "100", "--election-timeout", "1000",
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		}
		if c.tls {
			f := cl.files
			args = append(args,
				"--cert-file", f.serverCert, "--key-file", f.serverKey, "--trusted-ca-file", f.ca, "--client-cert-auth",
				"--peer-cert-file", f.serverCert, "--peer-key-file", f.serverKey, "--peer-trusted-ca-file", f.ca, "--peer-client-cert-auth")
		}
		s := &Server{endpoint: clientURL[i], clientTLS: cl.clientTLS, files: cl.files, logPath: filepath.Join(mdir, "etcd.log")}
		logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, args...)
		if c.command != nil {
			cmd = c.command(i, bin, args...)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if runtime.GOARCH != "amd64" {
			cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
		}
		setProcAttr(cmd)
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("etcdtest: start member %d: %v", i, err)
		}
		logf.Close()
		s.cmd, s.exited = cmd, make(chan struct{})
		go func() { cmd.Wait(); close(s.exited) }()
		t.Cleanup(s.Stop)
		cl.Members = append(cl.Members, s)
	}
	for i, s := range cl.Members {
		var dial func(ctx context.Context, network, addr string) (net.Conn, error)
		if c.dial != nil {
			dial = c.dial(i)
		}
		if err := s.waitHealthy(dial); err != nil {
			t.Fatalf("etcdtest: member %d: %v", i, err)
		}
	}
	return cl
}

// waitHealthy polls the member's /health until it reports healthy.
func (s *Server) waitHealthy(dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	tr := &http.Transport{}
	if s.clientTLS != nil {
		tr.TLSClientConfig = s.ClientTLS()
	}
	if dial != nil {
		tr.DialContext = dial
	}
	hc := &http.Client{Timeout: time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); {
		select {
		case <-s.exited:
			return fmt.Errorf("etcd exited during startup; log:\n%s", s.logTail())
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

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.endpoint)
	}
	return out
}

// ClientTLS returns the client TLS configuration (nil without ClusterTLS).
func (c *Cluster) ClientTLS() *tls.Config {
	if c.clientTLS == nil {
		return nil
	}
	return c.clientTLS.Clone()
}

// ClientCertFiles returns the PEM files of the CA and the client
// certificate and key ("" without ClusterTLS).
func (c *Cluster) ClientCertFiles() (caFile, certFile, keyFile string) {
	return c.files.ca, c.files.cert, c.files.key
}

// Kill SIGKILLs member i (the others keep quorum while a majority lives).
func (c *Cluster) Kill(i int) { c.Members[i].Stop() }
