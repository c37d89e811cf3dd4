package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/otheruid"
)

// envPolicyClient makes the test binary a policy-socket client (run as
// another uid by the tests): it watches the socket named by the variable
// and prints what it got.
const envPolicyClient = "WARD_TEST_POLICY_CLIENT"

func init() { otheruid.Child(envPolicyClient, watchPolicyOnce) }

// watchPolicyOnce reads one version from the policy socket: "OK <version>
// <labels seen>" or "ERR <code> <message>".
func watchPolicyOnce(sock string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(local.NewCredentials()))
	if err != nil {
		return "ERR dial " + err.Error()
	}
	defer conn.Close()
	st, err := wardv1.NewPolicyDistributionClient(conn).WatchPolicy(ctx, &wardv1.WatchPolicyRequest{})
	if err == nil {
		var v *wardv1.PolicyVersion
		if v, err = st.Recv(); err == nil {
			return fmt.Sprintf("OK %d %s", v.Version, v.BundleJson)
		}
	}
	s, _ := status.FromError(err)
	return fmt.Sprintf("ERR %s %s", s.Code(), s.Message())
}

// runPolicyClientAs runs watchPolicyOnce in a child process as uid/gid.
func runPolicyClientAs(t *testing.T, bin, sock string, uid uint32) string {
	t.Helper()
	return otheruid.Run(t, bin, uid, envPolicyClient+"="+sock)
}

// startPolicyAgent starts an agent whose policy cache holds a version with
// a secret label, so an authorized caller is served at once.
func startPolicyAgent(t *testing.T, auth *testAuthority, dir string, allowUIDs []uint32) (*Agent, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := agentConfig(t, auth, dir)
	cfg.JoinToken = auth.joinToken()
	cfg.PolicySocket = filepath.Join(dir, "policy.sock")
	cfg.PolicySocketAllowedUIDs = allowUIDs
	a, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.MarshalBundle(policy.Bundle{Version: 1,
		Files:      map[string][]byte{"p.cedar": []byte(`@id("p") permit(principal, action, resource);`)},
		Principals: map[string]policy.Principal{"spiffe://" + testTD.Name() + "/web": {Labels: map[string]string{"team": "secret-team"}}}})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if err := a.savePolicy(&wardv1.PolicyVersion{Version: 1, BundleJson: b, Digest: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, cfg.PolicySocket
}

// TestPolicySocketRefusesUnattestedCallers: the policy relay (whole policy
// set and every registered label) is served only to callers that attest to
// one of the agent's entries or whose uid is allowed in the config; any
// other local user gets PermissionDenied saying what to do.
func TestPolicySocketRefusesUnattestedCallers(t *testing.T) {
	otheruid.Require(t)
	const nobody = otheruid.Nobody
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	auth.addEntry("/proxy", uidSelector()) // the test process (root) is the proxy
	dir := otheruid.PublicDir(t, "ward-agent-pol-")
	bin := otheruid.CopyTestBinary(t, dir, "agent.test")

	a, sock := startPolicyAgent(t, auth, filepath.Join(dir, "a"), nil)
	waitFor(t, "the proxy entry synced", func() bool { return a.Status().Entries == 1 })
	if got := watchPolicyOnce(sock); !strings.HasPrefix(got, "OK 1 ") || !strings.Contains(got, "secret-team") {
		t.Fatalf("attested caller (root, entry unix:uid:0): %q, want served", got)
	}
	got := runPolicyClientAs(t, bin, sock, nobody)
	if !strings.HasPrefix(got, "ERR PermissionDenied ") || strings.Contains(got, "secret-team") ||
		!strings.Contains(got, "policy_socket_allowed_uids") || !strings.Contains(got, "unix:uid:65534") {
		t.Fatalf("caller with no entry (uid %d): %q, want PermissionDenied saying what to do", nobody, got)
	}
	// Register an entry for uid 65534: it attests and is served.
	auth.addEntry("/nobody", fmt.Sprintf("unix:uid:%d", nobody))
	waitFor(t, "the second entry synced", func() bool { return a.Status().Entries == 2 })
	if got := runPolicyClientAs(t, bin, sock, nobody); !strings.HasPrefix(got, "OK 1 ") {
		t.Fatalf("caller attested to an entry (uid %d): %q, want served", nobody, got)
	}

	// Another agent, with no entry for 65534 but the uid allowed by config.
	auth2 := newTestAuthority(t, testTD, time.Hour, time.Hour)
	_, sock2 := startPolicyAgent(t, auth2, filepath.Join(dir, "b"), []uint32{nobody})
	if got := runPolicyClientAs(t, bin, sock2, nobody); !strings.HasPrefix(got, "OK 1 ") {
		t.Fatalf("caller in policy_socket_allowed_uids: %q, want served", got)
	}
	if got := runPolicyClientAs(t, bin, sock2, 65533); !strings.HasPrefix(got, "ERR PermissionDenied ") {
		t.Fatalf("caller neither attested nor allowed (uid 65533): %q", got)
	}
}

func TestPolicySocketAllowListConfig(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"uids and gids", "policy_socket_allowed_uids: [1000, 0]\npolicy_socket_allowed_gids: [999]\n", ""},
		{"(uid_t)-1", "policy_socket_allowed_uids: [4294967295]\n", "not a valid id"},
		{"negative", "policy_socket_allowed_gids: [-1]\n", "uint32"},
		{"socket off", "policy_socket: none\npolicy_socket_allowed_uids: [1000]\n", `policy_socket is "none"`},
	} {
		c, err := ParseConfig([]byte(goodConfig + tc.extra))
		if tc.want == "" {
			if err != nil || len(c.PolicySocketAllowedUIDs) != 2 || c.PolicySocketAllowedGIDs[0] != 999 {
				t.Errorf("%s: %v %+v", tc.name, err, c)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
