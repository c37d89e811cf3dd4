package agent

import (
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/attest"
)

// TestBinaryOnlyEntryNeverMatches: an entry from the authority (or the
// cache) that selects only on the binary is skipped, and even if one
// reached the index, matching ignores it: any local user can make /proc
// show a given binary (connect, then exec it), so such an entry would
// hand its SVID to whoever asks.
func TestBinaryOnlyEntryNeverMatches(t *testing.T) {
	a := bareAgent(t)
	err := a.applySync(&wardv1.SyncResponse{Entries: []*wardv1.Entry{
		protoEntry("bound", "/bound", "unix:path:/usr/bin/sleep", "unix:uid:65534"),
		protoEntry("unbound", "/unbound", "unix:path:/usr/bin/sleep"),
		protoEntry("unbound-sha", "/unbound-sha", "unix:sha256:"+fmtHex(64)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.entries["unbound"]; ok {
		t.Fatal("entry with only unix:path was accepted from the authority")
	}
	if _, ok := a.entries["unbound-sha"]; ok {
		t.Fatal("entry with only unix:sha256 was accepted from the authority")
	}
	// The attacker's caller: another uid, /proc shows the binary.
	attacker := attest.Normalize([]attest.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:1000"},
		{Type: "unix", Value: "path:/usr/bin/sleep"}, {Type: "unix", Value: "sha256:" + fmtHex(64)}})
	if got := a.Identities(attacker); len(got) != 0 {
		t.Fatalf("caller of another uid got %v", got)
	}
	// Matching itself ignores an unbound entry that reached the index.
	forced := &entry{id: "forced", selectors: attest.Normalize([]attest.Selector{{Type: "unix", Value: "path:/usr/bin/sleep"}})}
	if subsetSorted(forced.selectors, attacker) {
		t.Fatal("subsetSorted matched an entry whose only selector is unix:path")
	}
	owner := attest.Normalize(append(attacker, attest.Selector{Type: "unix", Value: "uid:65534"}))
	if got := a.Identities(owner); len(got) != 1 || got[0].ID.Path() != "/bound" {
		t.Fatalf("owner of uid 65534 running the binary got %v, want /bound", got)
	}
}
