package multicluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/testutil/netns"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/otheruid"
)

const (
	uidFedServer   = 41011
	uidFedClient   = 41012
	uidFedUnfedded = 41013
)

// cluster is one trust domain: a `ward server` process with its Node API
// and bundle endpoint on loopback, and one `ward agent` process.
type cluster struct {
	td, nodeAPI, bundleURL string
	s                      *e2e.Server
	pub                    string
	ns                     *netns.Node
	shares                 []string
}

func startCluster(t *testing.T, td string) *cluster {
	t.Helper()
	return startClusterIn(t, nil, td, "")
}

// startClusterIn starts the cluster's processes in network namespace nd
// (nil: this one, on loopback); fedExtra is added under federation:.
func startClusterIn(t *testing.T, nd *netns.Node, td, fedExtra string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{td: td, ns: nd, pub: e2e.PublicDir(t)}
	var bep string
	if nd == nil {
		c.nodeAPI, bep = netutil.FreeLoopbackAddr(t), netutil.FreeLoopbackAddr(t)
	} else {
		c.nodeAPI, bep = nd.Addr(8443), nd.Addr(8444)
	}
	c.bundleURL = "https://" + bep
	// Short SVIDs, so workloads move to a new root within half a minute;
	// the WireGuard network on for the overlay the network tests use.
	cfg := fmt.Sprintf("trust_domain: %s\ndata_dir: %s\nhttp_address: 127.0.0.1:0\nlog_level: info\nidentity:\n  node_api_address: %s\n  svid_ttl: 1m\n  agent_svid_ttl: 2m\nnetwork:\n  overlay_cidrs: [10.250.0.0/16]\nfederation:\n  bundle_endpoint:\n    address: %s\n%s",
		td, dir, c.nodeAPI, bep, fedExtra)
	p := filepath.Join(dir, "ward.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.s = e2e.StartServerIn(t, nd, dir, p)
	c.shares = c.s.InitAndUnseal()
	e2e.MustWard(t, c.s.Addr, "", "ca", "bundle", "--format", "spiffe", "-o", filepath.Join(c.pub, td+".json"))
	return c
}

func (c *cluster) ward(t *testing.T, args ...string) string {
	t.Helper()
	return e2e.MustWard(t, c.s.Addr, "", args...)
}

func (c *cluster) agent(t *testing.T) *e2e.AgentProc {
	t.Helper()
	bundle := filepath.Join(c.pub, "bundle.pem")
	c.ward(t, "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(c.ward(t, "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	return e2e.StartAgentProcIn(t, c.ns, c.td, c.pub, c.nodeAPI, bundle, token)
}

// countFails counts FAIL lines from index from on.
func countFails(w *e2e.Workload, from int) (fails int, last string) {
	lines := w.Output()
	for i := from; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "FAIL") {
			fails++
			last = lines[i]
		}
	}
	return fails, last
}

// lastOK is the fields of w's last OK line (empty if none).
func lastOK(w *e2e.Workload) map[string]string {
	lines := w.Output()
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "OK ") {
			return e2e.Fields(lines[i])
		}
	}
	return map[string]string{}
}

// waitOKs waits (bounded) for n more OK lines after from.
func waitOKs(t *testing.T, w *e2e.Workload, from, n int) int {
	t.Helper()
	for range n {
		_, from = w.WaitLine(t, "OK ", from)
	}
	return from
}

// TestFederatedClustersTalkAcrossTrustDomains runs two clusters as real
// processes — `ward server` and `ward agent` for a.example and for
// b.example, on loopback — federated both ways with `ward federation add`.
// A go-spiffe workload in B calls one in A over mTLS with a JWT-SVID:
// each side's X509Source and JWTSource validate the other trust domain's
// SVIDs with the federated bundle its agent serves, through an
// intermediate rotation in A and while A's authority is down (B keeps A's
// last good bundle). A workload in B whose entry does not federate with A
// cannot validate A.
func TestFederatedClustersTalkAcrossTrustDomains(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities, two agents and three workloads")
	}
	otheruid.Require(t) // workloads run as other uids
	a := startCluster(t, "a.example")
	b := startCluster(t, "b.example")
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))
	if out := b.ward(t, "federation", "list"); !strings.Contains(out, "a.example") || strings.Contains(out, "STALE") {
		t.Fatalf("ward federation list in B:\n%s", out)
	}

	serverID := "spiffe://a.example/api"
	clientID := "spiffe://b.example/client"
	a.ward(t, "entry", "create", "--spiffe-id", serverID, "--parent", "spiffe://a.example/ward/agent/node-1",
		"--selector", fmt.Sprintf("unix:uid:%d", uidFedServer), "--federates-with", "b.example")
	b.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", "spiffe://b.example/ward/agent/node-1",
		"--selector", fmt.Sprintf("unix:uid:%d", uidFedClient), "--federates-with", "a.example")
	b.ward(t, "entry", "create", "--spiffe-id", "spiffe://b.example/local-only", "--parent", "spiffe://b.example/ward/agent/node-1",
		"--selector", fmt.Sprintf("unix:uid:%d", uidFedUnfedded))
	agA, agB := a.agent(t), b.agent(t)
	agA.WaitStatus("1 SVID", func(st e2e.AgentStatus) bool { return st.SVIDs == 1 })
	agB.WaitStatus("2 SVIDs", func(st e2e.AgentStatus) bool { return st.SVIDs == 2 })

	srv := e2e.StartWorkload(t, uidFedServer, "server", agA.Socket, e2e.EnvPeer+"="+clientID)
	listen, _ := srv.WaitLine(t, "LISTEN ", 0)
	addr := e2e.EnvAddr + "=" + strings.TrimPrefix(listen, "LISTEN ")
	cli := e2e.StartWorkload(t, uidFedClient, "client", agB.Socket, e2e.EnvPeer+"="+serverID, addr)
	pos := waitOKs(t, cli, 0, 5)
	if n, last := countFails(cli, 0); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed, last: %s", n, last)
	}

	// Trust domains stay apart: B's workload without federates_with has no
	// bundle of a.example and refuses A's server.
	lone := e2e.StartWorkload(t, uidFedUnfedded, "client", agB.Socket, e2e.EnvPeer+"="+serverID, addr)
	line, _ := lone.WaitLine(t, "FAIL", 0)
	if !strings.Contains(line, "handshake") {
		t.Fatalf("unfederated workload: %s", line)
	}
	t.Logf("workload of B without federates_with: %s", line)
	if out := strings.Join(lone.Output(), "\n"); strings.Contains(out, "OK ") {
		t.Fatalf("a workload of B without federates_with validated A's SVID:\n%s", out)
	}

	pos = rotateUnderTraffic(t, a, cli, pos, b)

	authorityOutage(t, a, b, cli, pos, false, nil)
}

// rotateUnderTraffic rotates A's intermediate, then A's root, while cli (a
// go-spiffe client in a federated cluster calling a server of A, a fresh
// handshake each round) keeps calling, and fails on any failed round from
// pos on; it returns the new position in cli's output.
//
// An intermediate rotation leaves the bundle (roots) unchanged. The root
// is rotated the way federation needs it: the new root is published first
// (--prepare), the peers fetch it (their refresh, here asked for at once)
// and hand it to their workloads, and only then does A activate it;
// afterwards A's server presents a chain to the new root.
func rotateUnderTraffic(t *testing.T, a *cluster, cli *e2e.Workload, pos int, peers ...*cluster) int {
	t.Helper()
	a.ward(t, "ca", "rotate")
	from := pos
	pos = waitOKs(t, cli, pos, 20)
	if n, last := countFails(cli, from); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed across A's intermediate rotation, last: %s", n, last)
	}

	f0 := e2e.Fields(cli.Output()[pos-1])
	a.ward(t, "ca", "rotate", "--root", "--prepare")
	for _, p := range peers {
		p.ward(t, "federation", "refresh", a.td)
	}
	from = pos
	_, pos = e2e.WaitClient(t, cli, pos, func(f map[string]string) bool { return f["peerroots"] == "2" })
	a.ward(t, "ca", "rotate", "--root")
	_, pos = e2e.WaitClient(t, cli, pos, func(f map[string]string) bool { return f["peerroot"] != f0["peerroot"] && f["peerroot"] != "" })
	if n, last := countFails(cli, from); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed across A's root rotation, last: %s", n, last)
	}
	return pos
}

// authorityOutage takes A's authority down (SIGTERM, or with kill SIGKILL)
// while cli (a go-spiffe client in B calling a server of A) keeps calling:
// B cannot refresh, says so, keeps A's last good bundle, and not one round
// fails (the agents serve from what they hold). Then A is restarted and
// unsealed: its relationship with B is still there, B refreshes from it
// again and the rounds go on. whileDown (if not nil) runs while A is down.
// It returns the new position in cli's output.
func authorityOutage(t *testing.T, a, b *cluster, cli *e2e.Workload, pos int, kill bool, whileDown func()) int {
	t.Helper()
	// The outage must not outlast the SVID of A's server. One is rotated
	// at about half its life (svid_ttl 1m), so one due for rotation has
	// under 30s left, which a loaded machine's restart and unseal can
	// use up: if it has less than minLeft, wait (bounded) for its
	// rotation first.
	const minLeft = 40 * time.Second
	if f := lastOK(cli); f["peerexp"] != "" {
		exp, err := strconv.ParseInt(f["peerexp"], 10, 64)
		if err != nil {
			t.Fatalf("peerexp %q: %v", f["peerexp"], err)
		}
		if time.Until(time.Unix(exp, 0)) < minLeft {
			_, pos = e2e.WaitClient(t, cli, pos, func(g map[string]string) bool { return g["peerserial"] != f["peerserial"] })
		}
	}
	if kill {
		a.s.Kill()
	} else {
		a.s.Stop()
	}
	res := e2e.Ward(t, b.s.Addr, "", "federation", "refresh", a.td)
	if res.Code == 0 || !strings.Contains(res.Stderr, "last good bundle stays in use") {
		t.Fatalf("refresh with A down: exit %d, %s", res.Code, res.Stderr)
	}
	show := b.ward(t, "federation", "show", a.td)
	if !strings.Contains(show, "Last error:") || strings.Contains(show, "Bundle sequence:  none") {
		t.Fatalf("ward federation show in B with A down:\n%s", show)
	}
	from := pos
	pos = waitOKs(t, cli, pos, 10)
	if n, last := countFails(cli, from); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed while A's authority was down, last: %s", n, last)
	}
	if whileDown != nil {
		whileDown()
	}

	a.s.Start()
	a.s.Unseal(a.shares[:3])
	if out := a.ward(t, "federation", "list"); !strings.Contains(out, b.td) {
		t.Fatalf("A lost its relationship with B across a restart:\n%s", out)
	}
	b.ward(t, "federation", "refresh", a.td)
	if show := b.ward(t, "federation", "show", a.td); strings.Contains(show, "Last error:") {
		t.Fatalf("B still shows an error after A came back:\n%s", show)
	}
	from = pos
	pos = waitOKs(t, cli, pos, 5)
	if n, last := countFails(cli, from); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed after A came back, last: %s", n, last)
	}
	return pos
}
