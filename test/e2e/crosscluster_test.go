package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// crossProxy starts `ward proxy` with config cfg; its output (JSON logs and
// access log) goes to the returned buffer.
func crossProxy(t *testing.T, dir, name, cfg string) *syncbuf.Buffer {
	t.Helper()
	p := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wardBin, "proxy", "--config", p)
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(cmd) })
	return logs
}

// echoServer answers every line with "echo LINE" until the client closes.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "echo %s", line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// crossRound opens a connection through the outbound proxy and sends one
// line; it returns the open connection when the echo came back.
func crossRound(addr string) (net.Conn, *bufio.Reader, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := fmt.Fprintf(c, "hello\n"); err != nil {
		c.Close()
		return nil, nil, err
	}
	line, err := r.ReadString('\n')
	if err != nil || line != "echo hello\n" {
		c.Close()
		return nil, nil, fmt.Errorf("reply %q: %v", line, err)
	}
	c.SetDeadline(time.Time{})
	return c, r, nil
}

// TestCrossClusterPolicyAndRevocation runs two clusters as real processes
// (ward server + ward agent + ward proxy each, on loopback), federated both
// ways. A's workload calls B's service through A's outbound proxy and B's
// inbound proxy, allowed by a policy in B naming A's trust domain. Then
// `ward revoke` in A: A's authority publishes it on its revocation channel,
// B's authority receives it, audits it and pushes a new policy version with
// A's remote deny-list to its agent and proxy, which closes the open
// connection and refuses new ones, within the 2 s. A revoke naming
// B's identity issued in A is refused.
func TestCrossClusterPolicyAndRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities, two agents and two proxies")
	}
	a := startCluster(t, "a.example")
	b := startCluster(t, "b.example")
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))

	clientID, apiID := "spiffe://a.example/client", "spiffe://b.example/api"
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	a.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", "spiffe://a.example/ward/agent/node-1", "--selector", uid, "--federates-with", "b.example")
	b.ward(t, "entry", "create", "--spiffe-id", apiID, "--parent", "spiffe://b.example/ward/agent/node-1", "--selector", uid, "--federates-with", "a.example")
	dir := t.TempDir()
	polA, polB := filepath.Join(dir, "a.cedar"), filepath.Join(dir, "b.cedar")
	os.WriteFile(polA, []byte(`permit(principal in TrustDomain::"a.example", action == Action::"connect", resource);`), 0o600)
	os.WriteFile(polB, []byte(`@id("clients-of-a")
permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" && principal.path == "/client" };`), 0o600)
	a.ward(t, "policy", "apply", polA)
	b.ward(t, "policy", "apply", polB)
	agA, agB := a.agent(t), b.agent(t)
	agA.waitStatus("1 SVID", func(st agentStatus) bool { return st.SVIDs == 1 })
	agB.waitStatus("1 SVID", func(st agentStatus) bool { return st.SVIDs == 1 })

	app := echoServer(t)
	inbound, outbound := netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t)
	logB := crossProxy(t, dir, "b", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
inbound:
  - name: api
    listen: %s
    forward: %s
    service: {name: api, port: 8443}
`, agB.socket, filepath.Join(b.pub, "policy.sock"), inbound, app))
	logA := crossProxy(t, dir, "a", fmt.Sprintf(`workload_api_socket: unix://%s
policy_socket: unix://%s
access_log: stdout
outbound:
  - name: to-b-api
    listen: %s
    remote: %s
    server_id: %s
`, agA.socket, filepath.Join(a.pub, "policy.sock"), outbound, inbound, apiID))

	var conn net.Conn
	var r *bufio.Reader
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		if conn, r, err = crossRound(outbound); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cross-cluster round trip: %v\nproxy A:\n%s\nproxy B:\n%s", err, tail(logA.String(), 3000), tail(logB.String(), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer conn.Close()
	if !strings.Contains(logB.String(), `"peer_trust_domain":"a.example"`) {
		t.Fatalf("B's access log does not name the peer's trust domain:\n%s", tail(logB.String(), 2000))
	}

	// A revoke in A naming B's identity is refused, and changes nothing.
	res := ward(t, a.s.addr, "", "revoke", "--spiffe-id", apiID)
	if res.code == 0 || !strings.Contains(res.stderr, "can only revoke its own identities") {
		t.Fatalf("revoke of B's ID in A: exit %d\n%s", res.code, res.stderr)
	}

	// The open connection still works; then A revokes its client.
	if _, err := fmt.Fprintf(conn, "again\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "echo again\n" {
		t.Fatalf("open connection before the revoke: %q %v", line, err)
	}
	t0 := time.Now()
	a.ward(t, "revoke", "--spiffe-id", clientID)
	conn.SetReadDeadline(t0.Add(2 * time.Second))
	_, err := r.ReadString('\n')
	closed := time.Since(t0)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the open connection into B was not closed within 2s of ward revoke in A\nproxy B:\n%s", tail(logB.String(), 3000))
	}
	t.Logf("ward revoke in A -> open connection into B closed: %s", closed)
	if c2, _, err := crossRound(outbound); err == nil {
		c2.Close()
		t.Fatal("a new connection of the revoked client into B was allowed")
	}
	if !strings.Contains(logB.String(), "deny-list of a.example: SPIFFE ID") {
		t.Fatalf("B's access log does not name A's deny-list:\n%s", tail(logB.String(), 3000))
	}
	// B's audit log holds the received update.
	if out := b.ward(t, "audit", "tail", "-n", "200"); !strings.Contains(out, "federation.revocations") {
		t.Fatalf("B's audit log has no federation.revocations event:\n%s", tail(out, 3000))
	}
}
