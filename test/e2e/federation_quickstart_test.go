package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFederationQuickstart plays the user of docs/federation.md: it runs
// the block marked federation-quickstart (two `ward dev up` clusters,
// federated, a request across and a revoke across; no root) line by line,
// verbatim, in one bash, and checks what each line's comment promises:
// "allowed" gets B's app naming A's client, the revoke line returns only
// once B's proxy closed the open stream, "denied" keeps failing, and
// "refused" fails naming the rule.
//
// Entries, bundles and policies reach the proxies by pushes, so an
// "allowed"/"denied" line is re-run, verbatim, until it shows its outcome
// (bounded).
func TestFederationQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two mesh demos")
	}
	var block *docBlock
	for _, b := range docBlocks(t, filepath.Join("..", "..", "docs", "federation.md")) {
		if strings.HasPrefix(b.marker, "federation-quickstart") {
			block = &b
			break
		}
	}
	if block == nil {
		t.Fatal("docs/federation.md has no ```sh block marked <!-- federation-quickstart ... -->")
	}
	dir := t.TempDir()
	sh := startDocShell(t, dir)
	t.Cleanup(func() {
		sh.run("ward dev down mesh-a", time.Minute)
		sh.run("ward dev down mesh-b", time.Minute)
	})

	var allowed, streamed, revoked, denied, refused bool
	for _, cmd := range block.commands() {
		comment := ""
		if i := strings.Index(cmd, "# "); i >= 0 {
			comment = strings.TrimSpace(cmd[i+2:])
		}
		code := strings.TrimSpace(strings.SplitN(cmd, "#", 2)[0])
		switch {
		case strings.HasPrefix(comment, "allowed"):
			sh.retry(t, cmd, func(out string, rc int) bool {
				return rc == 0 && strings.Contains(out, "hello from spiffe://b.example/demo/api to spiffe://a.example/demo/client")
			})
			allowed = true
		case strings.Contains(code, "/stream &"):
			sh.startStream(t, cmd)
			streamed = true
		case strings.HasPrefix(comment, "revoked"):
			if !streamed {
				t.Fatal("the revoke line comes before an open connection")
			}
			// `wait` returns only once the stream's curl has ended: B's
			// proxy closed the open connection on A's revocation.
			out, rc, ok := sh.run(cmd, 2*time.Minute)
			if !ok || rc != 0 || !strings.Contains(out, "stream closed by B") {
				t.Fatalf("%s: exit %d (returned: %v):\n%s", cmd, rc, ok, out)
			}
			// The access log line is written as the proxy finishes the
			// connection, possibly after the client saw the close: re-read
			// it for a bounded while.
			var log []byte
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				log, _ = os.ReadFile(filepath.Join(dir, "mesh-b", "access.log"))
				if strings.Contains(string(log), "deny-list of a.example: SPIFFE ID") || time.Now().After(deadline) {
					break
				}
			}
			if !strings.Contains(string(log), "deny-list of a.example: SPIFFE ID") {
				t.Fatalf("mesh-b/access.log records no connection closed by A's deny-list:\n%s", Tail(string(log), 3000))
			}
			revoked = true
		case strings.HasPrefix(comment, "denied"):
			sh.retry(t, cmd, func(out string, rc int) bool { return rc != 0 && !strings.Contains(out, "hello from ") })
			denied = true
		case strings.HasPrefix(comment, "refused"):
			out, rc, _ := sh.run(cmd, time.Minute)
			if rc == 0 || !strings.Contains(out, "can only revoke its own identities") {
				t.Fatalf("%s: exit %d:\n%s", cmd, rc, out)
			}
			refused = true
		default:
			out, rc, ok := sh.run(cmd, 4*time.Minute)
			if !ok || rc != 0 {
				t.Fatalf("%s: exit %d (returned: %v):\n%s", cmd, rc, ok, out)
			}
		}
	}
	if !allowed || !revoked || !denied || !refused {
		t.Fatalf("the quickstart must show a request across, a revoke across, the refusal after it and a refused foreign revoke; saw allowed=%v revoked=%v denied=%v refused=%v",
			allowed, revoked, denied, refused)
	}
}
