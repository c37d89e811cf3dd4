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
	s := StartServer(t, dir, WriteConfig(t, dir, "identity: {node_api_address: '"+addr+"'}\n"))
	a := s.Addr
	out := MustWard(t, a, "", "operator", "init", "--shares", "3", "--threshold", "2")
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

	r := Ward(t, a, "", "operator", "unseal", shares[0])
	if r.Code == 0 || !strings.Contains(r.Stderr, "ward operator unseal < share.txt") || strings.Contains(r.Stderr, shares[0]) {
		t.Fatalf("argv share: exit %d, %s", r.Code, r.Stderr)
	}
	r = Ward(t, a, "", "operator", "status")
	if !strings.Contains(r.Stdout, "Unseal progress:     0/2") {
		t.Fatalf("status after an argv share:\n%s", r.Stdout)
	}

	r = Ward(t, a, shares[0]+"\n", "operator", "unseal")
	if r.Code == 0 || !strings.Contains(r.Stderr, "identity.node_api_address "+addr) || !strings.Contains(r.Stderr, "not accepted") {
		t.Fatalf("share with the Node API port busy: exit %d, %s", r.Code, r.Stderr)
	}
	busy.Close()
	s.Unseal(shares[:2])
	audit := MustWard(t, a, "", "audit", "tail", "-n", "50")
	iErr, iOK := strings.Index(audit, "node_api_address"), strings.LastIndex(audit, "operator.unseal")
	if iErr < 0 || iOK < iErr {
		t.Fatalf("audit log does not show the refused unseal before the unseal:\n%s", audit)
	}
}
