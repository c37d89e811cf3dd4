package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMeshQuickstart plays the newcomer: it runs the README's mesh
// quickstart (the block marked mesh-quickstart) line by line, verbatim, in
// one bash, and checks what each line's comment promises: "allowed" gets
// the demo app's answer naming the caller, "denied" fails and keeps
// failing, the background stream delivers lines, and the revoke line
// returns because the proxy closed that open connection.
//
// A policy change reaches the proxies by a push (authority → agent →
// proxy), so an "allowed"/"denied" line is re-run, verbatim, until it
// shows its outcome (bounded).
func TestMeshQuickstart(t *testing.T) {
	var block *docBlock
	for _, b := range docBlocks(t, filepath.Join("..", "..", "README.md")) {
		if strings.HasPrefix(b.marker, "mesh-quickstart") {
			block = &b
			break
		}
	}
	if block == nil {
		t.Fatal("README.md has no ```sh block marked <!-- mesh-quickstart ... -->")
	}
	dir := t.TempDir()
	sh := startDocShell(t, dir)
	t.Cleanup(func() { sh.run("ward dev down mesh", time.Minute) })

	var allowed, denied, streamed, revoked bool
	for _, cmd := range block.commands() {
		comment := ""
		if i := strings.Index(cmd, "# "); i >= 0 {
			comment = strings.TrimSpace(cmd[i+2:])
		}
		code := strings.TrimSpace(strings.SplitN(cmd, "#", 2)[0])
		switch {
		case strings.HasPrefix(comment, "allowed"):
			out := sh.retry(t, cmd, func(out string, rc int) bool { return rc == 0 && strings.Contains(out, "hello from ") })
			if !strings.Contains(out, "spiffe://dev.ward.internal/demo/web") {
				t.Fatalf("%s: the answer does not name the caller's SPIFFE ID:\n%s", cmd, out)
			}
			allowed = true
		case strings.HasPrefix(comment, "denied"):
			sh.retry(t, cmd, func(out string, rc int) bool { return rc != 0 && !strings.Contains(out, "hello from ") })
			// the deny holds: the same request once more, still refused
			if out, rc, _ := sh.run(cmd, time.Minute); rc == 0 || strings.Contains(out, "hello from ") {
				t.Fatalf("%s: allowed again right after being denied (exit %d):\n%s", cmd, rc, out)
			}
			denied = true
		case strings.HasSuffix(code, "&"):
			sh.startStream(t, cmd)
			streamed = true
		case strings.Contains(code, "ward revoke"):
			if !streamed {
				t.Fatal("the revoke line comes before an open connection")
			}
			// `wait` returns only once the stream's curl has ended: the
			// proxy closed the open connection on the revocation.
			out, rc, ok := sh.run(cmd, 2*time.Minute)
			if !ok {
				t.Fatalf("%s: the open connection was not closed:\n%s", cmd, out)
			}
			if rc != 0 || !strings.Contains(out, "revoked in policy version") {
				t.Fatalf("%s: exit %d:\n%s", cmd, rc, out)
			}
			log, _ := os.ReadFile(filepath.Join(dir, "mesh", "access.log"))
			if !strings.Contains(string(log), `"outcome":"closed_by_policy"`) || !strings.Contains(string(log), `"cause":"deny-list"`) {
				t.Fatalf("mesh/access.log records no connection closed by the deny-list:\n%s", log)
			}
			revoked = true
		default:
			out, rc, ok := sh.run(cmd, 4*time.Minute)
			if !ok || rc != 0 {
				t.Fatalf("%s: exit %d (returned: %v):\n%s", cmd, rc, ok, out)
			}
		}
	}
	// What the demo wrote are examples that pass their own checks.
	for _, check := range []string{
		"ward agent --config mesh/agent.yaml --check",
		"ward proxy --config mesh/proxy-api.yaml --check",
		"ward proxy --config mesh/proxy-web.yaml --check",
		"ward policy test -f mesh/policies/ --principal spiffe://dev.ward.internal/demo/web --action connect --resource service:api",
	} {
		if out, rc, _ := sh.run(check, time.Minute); rc != 0 {
			t.Errorf("%s: exit %d:\n%s", check, rc, out)
		}
	}
	if !allowed || !denied || !revoked {
		t.Fatalf("the quickstart must show an allowed request, a denied one and a revoke; saw allowed=%v denied=%v revoked=%v", allowed, denied, revoked)
	}
}

// retry re-runs a command (verbatim) until done holds for its output and
// exit code (bounded), and returns the output.
func (s *docShell) retry(t *testing.T, cmd string, done func(out string, rc int) bool) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, rc, ok := s.run(cmd, time.Minute)
		if ok && done(out, rc) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never showed what its comment says (last exit %d):\n%s", cmd, rc, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startStream runs a command that starts a stream in the background (a
// curl of the demo app's /stream) and waits (bounded) until it delivered
// two lines.
func (s *docShell) startStream(t *testing.T, cmd string) {
	t.Helper()
	at := s.offset()
	if _, _, ok := s.run(cmd, time.Minute); !ok {
		t.Fatalf("%s: did not return", cmd)
	}
	deadline := time.Now().Add(time.Minute)
	for strings.Count(s.since(at), "stream line ") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the stream delivered no lines:\n%s", cmd, s.since(at))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
