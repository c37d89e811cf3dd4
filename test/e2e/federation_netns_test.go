package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netns"
)

// TestFederationAcrossNetworkNamespaces: two clusters, each its own network
// namespace (authority, agent and workloads inside), joined by veth links
// on a private bridge. A workload in B calls one in A across the link with
// federated trust; a partition of A keeps B's last good bundle of A, and
// after healing B's refresher catches up with no manual step and the
// traffic resumes. Root only (network namespaces); skipped otherwise.
func TestFederationAcrossNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clusters in network namespaces")
	}
	nw := netns.New(t)
	na, nb := nw.AddNode("a"), nw.AddNode("b")
	a := startClusterIn(t, na, "a.example", "")
	b := startClusterIn(t, nb, "b.example", "  refresh_min: 1s\n")
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))
	for _, c := range []struct{ in, of *cluster }{{a, b}, {b, a}} {
		c.in.ward(t, "federation", "refresh", c.of.td)
	}

	serverID, clientID := "spiffe://a.example/api", "spiffe://b.example/client"
	a.ward(t, "entry", "create", "--spiffe-id", serverID, "--parent", "spiffe://a.example/ward/agent/node-1",
		"--selector", fmt.Sprintf("unix:uid:%d", uidFedServer), "--federates-with", "b.example")
	b.ward(t, "entry", "create", "--spiffe-id", clientID, "--parent", "spiffe://b.example/ward/agent/node-1",
		"--selector", fmt.Sprintf("unix:uid:%d", uidFedClient), "--federates-with", "a.example")
	agA, agB := a.agent(t), b.agent(t)

	srv := startWorkloadIn(t, na, uidFedServer, "server", agA.socket, envPeer+"="+clientID, envListen+"="+na.Addr(9443))
	srv.waitLine(t, "LISTEN ", 0)
	cli := startWorkloadIn(t, nb, uidFedClient, "client", agB.socket, envPeer+"="+serverID, envAddr+"="+na.Addr(9443))
	pos := waitOKs(t, cli, 0, 5)
	if n, last := countFails(cli, 0); n > 0 {
		t.Fatalf("%d cross-cluster rounds failed, last: %s", n, last)
	}
	good := fedShow(t, b, "a.example")

	// Partition A: B cannot refresh and keeps the last good bundle.
	na.Partition()
	res := ward(t, b.s.addr, "", "federation", "refresh", "a.example")
	if res.code == 0 || !strings.Contains(res.stderr, "last good bundle stays in use") {
		t.Fatalf("refresh with A partitioned: exit %d, %s", res.code, res.stderr)
	}
	during := fedShow(t, b, "a.example")
	if during.LastError == "" || during.BundleSpiffeJSON != good.BundleSpiffeJSON {
		t.Fatalf("during the partition B shows error %q, same bundle %v", during.LastError, during.BundleSpiffeJSON == good.BundleSpiffeJSON)
	}

	// Heal: the refresher (refresh_min 1s, doubling) clears the error on
	// its own, and the workloads talk again.
	na.Heal()
	deadline := time.Now().Add(90 * time.Second)
	for fedShow(t, b, "a.example").LastError != "" {
		if time.Now().After(deadline) {
			t.Fatalf("B's refresher did not catch up after healing: %+v", fedShow(t, b, "a.example"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	pos = len(cli.output())
	waitOKs(t, cli, pos, 5)
}

type fedStatus struct {
	LastError        string `json:"lastError"`
	BundleSpiffeJSON string `json:"bundleSpiffeJson"`
	Sequence         string `json:"sequence"`
}

func fedShow(t *testing.T, c *cluster, td string) fedStatus {
	t.Helper()
	var st fedStatus
	out := c.ward(t, "federation", "show", td, "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("ward federation show --json: %v\n%s", err, out)
	}
	return st
}
