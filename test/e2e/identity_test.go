package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/otheruid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const (
	uidServer  = 41001
	uidClient  = 41002
	uidNoEntry = 41003
)

// TestWorkloadIdentityThroughRotationsAndOutage runs the real authority
// and `ward agent` as processes and go-spiffe's own Workload API client in
// two workloads running as different uids. They keep an mTLS conversation
// (a fresh handshake every 100ms, plus a JWT-SVID checked by the server)
// going through an SVID rotation, an intermediate rotation, a root
// rotation, an authority outage longer than an SVID half-life and an agent
// restart during that outage. Not one handshake may fail.
func TestWorkloadIdentityThroughRotationsAndOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about two minutes (the shortest SVID TTL is one minute)")
	}
	otheruid.Require(t) // workloads run as other uids
	// The outage below lasts a little more than half an SVID life and
	// begins with SVIDs fresh everywhere: what is left of their life once
	// the authority is back (about svidTTL/2) absorbs a slow unseal, agent
	// reconnection and re-issue on a loaded machine.
	const svidTTL, agentSVIDTTL = time.Minute, 2 * time.Minute
	outage := svidTTL/2 + 2*time.Second
	dir := t.TempDir()
	nodeAPI := netutil.FreeLoopbackAddr(t)
	s := StartServer(t, dir, WriteConfig(t, dir, fmt.Sprintf("identity:\n  node_api_address: %s\n  svid_ttl: %s\n  agent_svid_ttl: %s\n  jwt_svid_ttl: 5m\n", nodeAPI, svidTTL, agentSVIDTTL)))
	shares := s.InitAndUnseal()
	a := s.Addr

	pub := PublicDir(t)
	bundle := filepath.Join(pub, "bundle.pem")
	MustWard(t, a, "", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	agentID := "spiffe://e2e.example.org/ward/agent/node-1"
	serverID := "spiffe://e2e.example.org/e2e/server"
	clientID := "spiffe://e2e.example.org/e2e/client"
	toolID := "spiffe://e2e.example.org/e2e/tool"
	MustWard(t, a, "", "entry", "create", "--spiffe-id", serverID, "--parent", agentID, "--selector", fmt.Sprintf("unix:uid:%d", uidServer), "--dns", "server.e2e.internal")
	MustWard(t, a, "", "entry", "create", "--spiffe-id", clientID, "--parent", agentID, "--selector", fmt.Sprintf("unix:uid:%d", uidClient))
	MustWard(t, a, "", "entry", "create", "--spiffe-id", toolID, "--parent", agentID, "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))

	ag := startAgentProc(t, pub, nodeAPI, bundle, token)
	ag.WaitStatus("3 SVIDs", func(st AgentStatus) bool { return st.AgentID == agentID && st.SVIDs == 3 })
	if out := MustWard(t, a, "", "agent", "list"); !strings.Contains(out, agentID) {
		t.Fatalf("ward agent list lacks %s:\n%s", agentID, out)
	}

	// A caller matching no entry gets PermissionDenied; one without the
	// security header gets InvalidArgument.
	nobody := StartWorkload(t, uidNoEntry, "fetch", ag.Socket)
	if line, _ := nobody.WaitLine(t, "FETCH", 0); line != "FETCH PermissionDenied" {
		t.Fatalf("caller without entry: %s", line)
	}
	checkMissingHeader(t, ag.Socket)

	// openssl accepts an issued chain against the bundle and shows the URI SAN.
	checkWithOpenSSL(t, ag.Socket, pub, toolID)

	srv := StartWorkload(t, uidServer, "server", ag.Socket, EnvPeer+"="+clientID)
	listen, _ := srv.WaitLine(t, "LISTEN ", 0)
	cli := StartWorkload(t, uidClient, "client", ag.Socket, EnvPeer+"="+serverID, EnvAddr+"="+strings.TrimPrefix(listen, "LISTEN "))
	first, pos := cli.WaitLine(t, "OK ", 0)
	f0 := Fields(first)

	// 1. SVID rotation with an intermediate rotation: rotate the
	// intermediate now; the next SVID (at half life) is signed by the new one.
	MustWard(t, a, "", "ca", "rotate")
	line, pos := WaitClient(t, cli, pos, func(f map[string]string) bool { return f["serial"] != f0["serial"] && f["issuer"] != f0["issuer"] })
	f1 := Fields(line)
	t.Logf("SVID and intermediate rotated: %s -> %s", first, line)

	// 2. Root rotation: the new root reaches every bundle before any SVID
	// chains to it. Both workloads' SVIDs rotate onto it (each at its own
	// jittered half life, so the server's may come later than the client's).
	MustWard(t, a, "", "ca", "rotate", "--root")
	line, pos = WaitClient(t, cli, pos, func(f map[string]string) bool {
		return f["root"] != f1["root"] && f["root"] != "" && f["peerroot"] == f["root"]
	})
	f2 := Fields(line)
	if n, _ := strconv.Atoi(f2["roots"]); n < 2 {
		t.Fatalf("after the root rotation the client trusts %s roots, want both", f2["roots"])
	}
	t.Logf("root rotated: %s", line)

	// 3. Authority down for longer than an SVID half-life, and the agent
	// restarted meanwhile: workloads keep valid SVIDs and keep talking;
	// staleness is reported. An SVID is rotated at about half its life, so
	// one issued just before its rotation has less than an outage of more
	// than half a life left: start the outage with fresh SVIDs everywhere,
	// by tainting the active intermediate (`ward ca taint` forces every
	// SVID it signed to be re-issued at the next sync), and waiting until
	// the client sees both its own and the server's SVID re-issued. The
	// agent's own SVID (rotated at half its life too) must outlive the
	// outage as well, or the agent, its join token spent, could never sync
	// again: the intermediates of before (one of which signed it) are
	// tainted with the active one, and the agent renews it at once.
	var caState struct {
		Keys []struct{ ID, Kind, State string } `json:"keys"`
	}
	if err := json.Unmarshal([]byte(MustWard(t, a, "", "ca", "show", "--json")), &caState); err != nil {
		t.Fatal(err)
	}
	active, tainted := "", map[string]bool{}
	for _, k := range caState.Keys {
		if k.Kind == "intermediate" && k.State == "active" {
			active = k.ID
		}
		if k.Kind == "intermediate" && k.State != "tainted" {
			tainted[k.ID] = true
		}
	}
	if active == "" {
		t.Fatalf("no active intermediate in ca show: %+v", caState)
	}
	pre := f2 // the last OK line before the taint
	for _, l := range cli.Output()[pos:] {
		if strings.HasPrefix(l, "OK ") {
			pre = Fields(l)
		}
	}
	for id := range tainted {
		if id != active {
			MustWard(t, a, "", "ca", "taint", id, "--yes")
		}
	}
	MustWard(t, a, "", "ca", "taint", active, "--yes") // also activates a fresh intermediate
	line, pos = WaitClient(t, cli, pos, func(f map[string]string) bool {
		return !tainted[f["issuer"]] && !tainted[f["peerissuer"]] && f["issuer"] != "" && f["peerissuer"] != "" &&
			f["serial"] != pre["serial"] && f["peerserial"] != pre["peerserial"]
	})
	t.Logf("re-issued after tainting %s (active) and %d other intermediates: %s", active, len(tainted)-1, line)
	fresh := Fields(line)
	agentExp := ag.WaitStatus("agent SVID renewed", func(st AgentStatus) bool {
		return time.Until(st.AgentSVIDExpires) > agentSVIDTTL*3/4
	}).AgentSVIDExpires
	s.Stop()
	downAt := time.Now()
	// The SVIDs must outlive the outage; log the margins for a post-mortem.
	soonest := time.Unix(min(atoi(t, fresh["exp"]), atoi(t, fresh["peerexp"])), 0)
	t.Logf("authority down; SVIDs expire in %s at the soonest, the agent's in %s, the outage lasts %s",
		soonest.Sub(downAt).Round(time.Second), agentExp.Sub(downAt).Round(time.Second), outage)
	if soonest.Sub(downAt) < outage+5*time.Second {
		t.Fatalf("SVIDs not fresh at the outage: they expire %s after it begins (%s)", soonest.Sub(downAt), line)
	}
	ag.WaitStatus("staleness reported", func(st AgentStatus) bool { return st.LastError != "" && st.SecondsSinceLastSync > 2 })
	ag.stop()
	ag.Start()
	st := ag.WaitStatus("cache loaded after restart", func(st AgentStatus) bool { return st.SVIDs == 3 && st.LastError != "" })
	if !strings.Contains(ag.Logs.String(), "agent cache loaded") {
		t.Fatalf("restarted agent did not load its cache:\n%s", Tail(ag.Logs.String(), 3000))
	}
	if st.SoonestSVIDExpiry.Before(time.Now()) {
		t.Fatalf("agent serves an expired SVID: %+v", st)
	}
	// The authority process comes back sealed during the outage (its Node
	// API listens only once unsealed), so that a slow start is not added
	// to the outage.
	s.Start()
	for time.Since(downAt) < outage {
		time.Sleep(100 * time.Millisecond)
	}
	st = ag.WaitStatus("long staleness", func(st AgentStatus) bool { return st.SecondsSinceLastSync > svidTTL.Seconds()/2 })
	if !strings.Contains(ag.Logs.String(), "authority unreachable; serving cached SVIDs") {
		t.Fatalf("agent did not log staleness:\n%s", Tail(ag.Logs.String(), 3000))
	}
	_, pos = cli.WaitLine(t, "OK ", len(cli.Output())) // still talking, on cached SVIDs, past their half life
	f3 := Fields(cli.Output()[pos-1])
	t.Logf("after %s of outage: agent SVID expires in %s, soonest SVID in %s", time.Since(downAt).Round(time.Second),
		time.Until(st.AgentSVIDExpires).Round(time.Second), time.Until(soonest).Round(time.Second))

	// 4. The authority returns (unseal): rotation catches up, for both
	// workloads.
	s.Unseal(shares[:3])
	ag.WaitStatus("sync after the outage", func(st AgentStatus) bool { return st.LastError == "" && st.SecondsSinceLastSync < 5 })
	line, _ = WaitClient(t, cli, pos, func(f map[string]string) bool {
		return f["serial"] != f3["serial"] && f["peerserial"] != f3["peerserial"]
	})
	t.Logf("caught up %s after the outage began, %s before the soonest expiry: %s", time.Since(downAt).Round(time.Second),
		time.Until(soonest).Round(time.Second), line)

	for name, w := range map[string]*Workload{"client": cli, "server": srv} {
		for _, l := range w.Output() {
			if strings.HasPrefix(l, "FAIL") || strings.HasPrefix(l, "ERROR") {
				t.Errorf("%s workload: %s", name, l)
			}
		}
	}
	oks := 0
	for _, l := range cli.Output() {
		if strings.HasPrefix(l, "OK ") {
			oks++
		}
	}
	t.Logf("%d successful mTLS handshakes with JWT-SVID checks, none failed", oks)
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

func checkMissingHeader(t *testing.T, socket string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := pb.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &pb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("call without the security header: %v, want InvalidArgument", err)
	}
}

// checkWithOpenSSL fetches this process's SVID (entry for the test's uid),
// and has openssl verify the chain against the bundle and print the SAN.
func checkWithOpenSSL(t *testing.T, socket, dir, wantID string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not installed; skipping the openssl checks")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	sv := x509ctx.DefaultSVID()
	if sv.ID.String() != wantID {
		t.Fatalf("tool SVID %s, want %s", sv.ID, wantID)
	}
	b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(sv.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, ders ...[]byte) string {
		var buf []byte
		for _, d := range ders {
			buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := write("leaf.pem", sv.Certificates[0].Raw)
	var inter [][]byte
	for _, c := range sv.Certificates[1:] {
		inter = append(inter, c.Raw)
	}
	untrusted := write("intermediates.pem", inter...)
	var roots [][]byte
	for _, c := range b.X509Authorities() {
		roots = append(roots, c.Raw)
	}
	ca := write("roots.pem", roots...)
	out, err := exec.Command("openssl", "verify", "-CAfile", ca, "-untrusted", untrusted, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	out, err = exec.Command("openssl", "x509", "-in", leaf, "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "URI:"+wantID) {
		t.Fatalf("openssl x509 -text lacks URI:%s: %v\n%s", wantID, err, out)
	}
}
