package cli

import (
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/config"
)

// TestPolicyRetentionCLI: with policy.keep_versions 1, `ward policy list`
// shows the current version and the one before, and a last line naming
// the pruned ones; `ward policy rollback` to a pruned version fails,
// naming the oldest version kept, and changes nothing.
func TestPolicyRetentionCLI(t *testing.T) {
	addr := devAuthority(t, func(c *config.Server) { c.Policy.KeepVersions = 1 })
	p := writePolicy(t, fencedPolicy)
	for range 4 {
		if _, _, err := wardStreams(t, addr, "policy", "apply", p); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := wardStreams(t, addr, "policy", "list")
	if err != nil || !strings.Contains(out, "Versions 1 to 2 were pruned") || strings.Count(out, "\n") != 4 {
		t.Fatalf("policy list: %v\n%s", err, out)
	}
	_, _, err = wardStreams(t, addr, "policy", "rollback", "1")
	if err == nil || !strings.Contains(err.Error(), "oldest version still kept is 3") {
		t.Fatalf("rollback to a pruned version: %v", err)
	}
	if again, _, err := wardStreams(t, addr, "policy", "list"); err != nil || again != out {
		t.Fatalf("a refused rollback changed the list: %v\n%s", err, again)
	}
}
