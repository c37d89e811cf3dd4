package multicluster

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"
)

// TestCrossClusterEvict runs the attack of a compromised node across
// federation: A's client calls B's service; A's operator evicts the agent
// of the client's node (`ward agent evict` in A). The client's SVID, issued
// through that agent and still unexpired, is on A's deny-list by serial;
// A's revocation channel carries it to B, whose proxy closes the open
// connection and refuses new ones (the deadlines bound the test only).
// The JWT-SVID the client got through that agent travels the same way (its
// jti): B's Workload API refuses it after the eviction, not B's own.
func TestCrossClusterEvict(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities, two agents and two proxies")
	}
	e := startCrossCluster(t)
	conn, r := e.waitRound(t, 10*time.Second)
	defer conn.Close()
	// JWT-SVIDs: the client's, minted through the node about to be
	// evicted, and B's api's own; B's Workload API validates both.
	stolen, _ := e2e.FetchJWTSVID(t, e.agA.Socket, "b-api")
	kept, _ := e2e.FetchJWTSVID(t, e.agB.Socket, "b-api")
	for what, tok := range map[string]string{"A's client's": stolen, "B's api's": kept} {
		if err := e2e.ValidateJWTSVID(e.agB.Socket, tok, "b-api"); err != nil {
			t.Fatalf("%s JWT-SVID at B before the eviction: %v", what, err)
		}
	}

	out := e.a.ward(t, "agent", "evict", "spiffe://a.example/ward/agent/node-1")
	if !strings.Contains(out, "Revoked ") || strings.Contains(out, "Revoked 0 ") {
		t.Fatalf("`ward agent evict` in A revoked nothing:\n%s", out)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := r.ReadString('\n')
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the evicted node's open connection into B was not closed:\n%s%s", e2e.Tail(e.logB.String(), 3000), e.logCTail())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c2, _, err := crossRound(e.outbound)
		if err != nil {
			break
		}
		c2.Close()
		if time.Now().After(deadline) {
			t.Fatalf("new connections of the evicted node's client into B are still allowed:\n%s", e2e.Tail(e.logB.String(), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(e.logB.String(), "deny-list of a.example: certificate serial") {
		t.Fatalf("B's access log does not name A's deny-list by serial:\n%s", e2e.Tail(e.logB.String(), 3000))
	}
	// The client's JWT-SVID reached B's agent by jti over the same
	// channel: refused there; B's own token is untouched.
	e2e.WaitJWTSVIDRefused(t, e.agB.Socket, stolen, "b-api", "A's evicted node's JWT-SVID at B")
	if err := e2e.ValidateJWTSVID(e.agB.Socket, kept, "b-api"); err != nil {
		t.Fatalf("B's api's JWT-SVID after A's eviction: %v", err)
	}
}
