package cli

import (
	"bytes"
	"strings"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestAgentListShowsEvictPending: `ward agent list` tells an agent whose
// eviction has not revoked yet from one evicted for good, in the table
// (with what to do) and in --json.
func TestAgentListShowsEvictPending(t *testing.T) {
	agents := []*wardv1.Agent{
		{SpiffeId: "spiffe://x.org/ward/agent/up", AttestationType: "join_token", Serial: "0a"},
		{SpiffeId: "spiffe://x.org/ward/agent/gone", AttestationType: "join_token", Serial: "0b", Evicted: true},
		{SpiffeId: "spiffe://x.org/ward/agent/half", AttestationType: "x509pop", Serial: "0c", Evicted: true, EvictPending: true},
	}
	var out bytes.Buffer
	if err := printAgents(&out, agents); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	want := map[string]string{"/up ": "active", "/gone ": "evicted", "/half ": "evict pending"}
	for frag, state := range want {
		found := false
		for _, l := range lines {
			if strings.Contains(l, frag) {
				found = true
				f := strings.Fields(l)
				if got := strings.Join(f[2:len(f)-3], " "); got != state {
					t.Errorf("%s: state %q, want %q (%q)", frag, got, state, l)
				}
			}
		}
		if !found {
			t.Errorf("no line for %s:\n%s", frag, out.String())
		}
	}
	if !strings.Contains(out.String(), "1 agent(s) evict pending") || !strings.Contains(out.String(), "ward agent evict AGENT-ID") {
		t.Errorf("no hint for the pending eviction:\n%s", out.String())
	}
	out.Reset()
	if err := printAgents(&out, agents[:2]); err != nil || strings.Contains(out.String(), "pending") {
		t.Errorf("hint without a pending eviction:\n%s", out.String())
	}
	out.Reset()
	if err := printJSON(&out, &wardv1.ListAgentsResponse{Agents: agents}); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), `"evictPending": true`) != 1 {
		t.Errorf("--json:\n%s", out.String())
	}
}
