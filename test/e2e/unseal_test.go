package e2e

import (
	"net"
	"strings"
	"testing"
)

// TestUnsealThroughTheCLI runs the red-team unseal findings against a real
// authority process: a share on argv is refused (and not sent: progress
// stays 0); a busy identity.node_api_address refuses the share with an
// error naming the field while keeping the progress; once the port is
// free the unseal completes, and the audit log shows the refusal as an
// error, not as an unseal.
func TestUnsealThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	s := startServer(t, dir, writeConfig(t, dir, "identity: {node_api_address: '"+addr+"'}\n"))
	a := s.addr
	out := mustWard(t, a, "", "operator", "init", "--shares", "3", "--threshold", "2")
	var shares []string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Unseal share "); ok {
			_, sh, _ := strings.Cut(v, ": ")
			shares = append(shares, strings.TrimSpace(sh))
		}
	}
	if len(shares) != 3 {
		t.Fatalf("init output: %s", out)
	}

	r := ward(t, a, "", "operator", "unseal", shares[0])
	if r.code == 0 || !strings.Contains(r.stderr, "ward operator unseal < share.txt") || strings.Contains(r.stderr, shares[0]) {
		t.Fatalf("argv share: exit %d, %s", r.code, r.stderr)
	}
	r = ward(t, a, "", "operator", "status")
	if !strings.Contains(r.stdout, "Unseal progress:     0/2") {
		t.Fatalf("status after an argv share:\n%s", r.stdout)
	}

	r = ward(t, a, shares[0]+"\n", "operator", "unseal")
	if r.code == 0 || !strings.Contains(r.stderr, "identity.node_api_address "+addr) || !strings.Contains(r.stderr, "not accepted") {
		t.Fatalf("share with the Node API port busy: exit %d, %s", r.code, r.stderr)
	}
	busy.Close()
	s.unseal(shares[:2])
	audit := mustWard(t, a, "", "audit", "tail", "-n", "50")
	iErr, iOK := strings.Index(audit, "node_api_address"), strings.LastIndex(audit, "operator.unseal")
	if iErr < 0 || iOK < iErr {
		t.Fatalf("audit log does not show the refused unseal before the unseal:\n%s", audit)
	}
}
