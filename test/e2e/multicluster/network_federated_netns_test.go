package multicluster

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/testutil/netns"
)

// TestFederatedNodeEncryptionInNetworkNamespaces: two clusters (a.example
// and b.example, each an authority in its own namespace) federated both
// ways with network shared (`ward federation add --network`), each with
// one node (a namespace running a real `ward agent` whose network section
// names the other trust domain in network.federated), all on one link.
//
//  1. Each agent gets the other cluster's node as a peer from its own
//     authority (over the federation's network channel), and traffic
//     between the nodes' overlay addresses flows through WireGuard: a
//     capture on the link shows WireGuard UDP, never the plaintext marker
//     nor an overlay packet in clear.
//  2. Evicting the node in cluster B removes it from cluster A's agent's
//     peers (B's list changes, A's long-poll carries it, A's Node API
//     pushes it), and the traffic stops.
func TestFederatedNodeEncryptionInNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities and two agents in network namespaces")
	}
	nw := netns.New(t)
	sa, sb := nw.AddNode("sa"), nw.AddNode("sb")
	a := &wgNode{nd: nw.AddNode("na"), overlay: "10.250.1.1", id: "spiffe://a.example/ward/agent/node-a"}
	b := &wgNode{nd: nw.AddNode("nb"), overlay: "10.250.2.1", id: "spiffe://b.example/ward/agent/node-b"}
	ca := startClusterIn(t, sa, "a.example", "")
	cb := startClusterIn(t, sb, "b.example", "")
	ca.ward(t, "federation", "add", "b.example", "--network", "--endpoint", cb.bundleURL, "--bundle", filepath.Join(cb.pub, "b.example.json"))
	cb.ward(t, "federation", "add", "a.example", "--network", "--endpoint", ca.bundleURL, "--bundle", filepath.Join(ca.pub, "a.example.json"))

	marker := []byte(fmt.Sprintf("federated-plaintext-marker-%d", time.Now().UnixNano()))
	lw := &linkWatch{marker: marker, overlay: netip.MustParsePrefix("10.250.0.0/16"), wgPort: 51820}
	nw.Hub().Capture(t).OnIPv4(lw.packet)

	for _, n := range []struct {
		w        *wgNode
		c        *cluster
		name, fd string
	}{{a, ca, "node-a", "b.example"}, {b, cb, "node-b", "a.example"}} {
		bundle := filepath.Join(n.c.pub, "bundle.pem")
		n.c.ward(t, "ca", "bundle", "-o", bundle)
		token := strings.TrimSpace(n.c.ward(t, "token", "create", "--ttl", "10m", "--agent-path", n.name, "-q"))
		n.w.ag = e2e.StartAgentProcExtra(t, n.w.nd, n.c.td, e2e.PublicDir(t), n.c.nodeAPI, bundle, token, fmt.Sprintf(`network:
  address: %s
  strict: true
  strict_cidrs: [10.250.0.0/16]
  federated: [%s]
`, n.w.overlay, n.fd))
	}
	a.waitNet(t, "b's node (cluster B) as a peer", func(st *agent.NetworkStatus) bool { return st.Registered && hasPeer(st, b.id) })
	b.waitNet(t, "a's node (cluster A) as a peer", func(st *agent.NetworkStatus) bool { return st.Registered && hasPeer(st, a.id) })
	if out := ca.ward(t, "federation", "show", "b.example"); !strings.Contains(out, "1 tunnels received") {
		t.Fatalf("ward federation show in A:\n%s", out)
	}

	// 1. Across the clusters, through the tunnel.
	echo := b.overlay + ":7000"
	echoOn(t, b.nd, echo)
	conn, err := dialTimeout(a.nd, echo, 10*time.Second)
	if err != nil {
		t.Fatalf("a (cluster A) cannot reach b's overlay address (cluster B) through the tunnel: %v", err)
	}
	defer conn.Close()
	if err := roundTrip(conn, append(append([]byte{}, marker...), '\n'), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// 2. B evicts its node: A's agent drops it.
	start := time.Now()
	cb.ward(t, "agent", "evict", b.id)
	a.waitNet(t, "b's key removed after its eviction in B", func(st *agent.NetworkStatus) bool { return !hasPeer(st, b.id) })
	t.Logf("eviction in cluster B: the node's key gone from cluster A's agent %v after `ward agent evict` returned", time.Since(start).Round(time.Millisecond))
	if err := roundTrip(conn, []byte("after eviction\n"), 3*time.Second); err == nil {
		t.Fatal("the connection into B's evicted node still works from A")
	}

	lw.wantOnlyWireGuard(t)
}
