package nodeapi

import (
	"net"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// fillHandshakesFromManySources runs the distributed attack: idle TCP
// connections (they never send a byte) from maxPreHandshake /
// maxPreHandshakePerSource sources (127.0.1.10 on), each at its
// per-source bound, until the total maxPreHandshake is reached.
func fillHandshakesFromManySources(t *testing.T, h *harness) {
	t.Helper()
	for src := 0; src < maxPreHandshake/maxPreHandshakePerSource; src++ {
		a := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(10+src))}
		for range maxPreHandshakePerSource {
			h.dialFrom(t, a)
		}
	}
	waitFor(t, "the total of pending handshakes to fill", func() bool {
		h.srv.limits.mu.Lock()
		defer h.srv.limits.mu.Unlock()
		return h.srv.limits.shakingN >= maxPreHandshake
	})
}

// pendingFrom is how many handshakes source key holds.
func (h *harness) pendingFrom(key string) int {
	h.srv.limits.mu.Lock()
	defer h.srv.limits.mu.Unlock()
	if q := h.srv.limits.shaking[key]; q != nil {
		return q.Len()
	}
	return 0
}

// TestDistributedIdleHandshakesDoNotLockOutAgents: 32 sources x 16 idle
// connections fill maxPreHandshake. Before, every new connection, from
// anyone, was refused (max_handshakes) for as long as the attackers
// renewed theirs, so an agent's Sync from 127.0.0.1 failed; now the
// agent's connection sheds the oldest pending handshake of a biggest
// source and is served.
func TestDistributedIdleHandshakesDoNotLockOutAgents(t *testing.T) {
	h := newHarness(t)
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	client := h.client(t, agent)
	fillHandshakesFromManySources(t, h)
	if _, err := client.Sync(syncCtx(t), &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("agent Sync from 127.0.0.1 while 32 sources fill the handshake total: %v; want it served (a biggest source's oldest handshake shed)", err)
	}
	if n := h.srv.RefusedConnections(RefusedHandshakes); n == 0 {
		t.Errorf("no handshake was shed (max_handshakes = 0); want the agent's connection to have shed an attacker's")
	}
}

// TestShedHandshakesKeepPerSourceBound: with the total full, a new source
// may shed others' handshakes only up to its own per-source bound; past
// it, its connections are refused (per_source_handshakes) and closed, and
// the total never exceeds maxPreHandshake.
func TestShedHandshakesKeepPerSourceBound(t *testing.T) {
	h := newHarness(t)
	fillHandshakesFromManySources(t, h)
	key := attacker.IP.String()
	for i := 0; i < maxPreHandshakePerSource; i++ {
		h.dialFrom(t, attacker)
		waitFor(t, "the newcomer's handshake slot", func() bool { return h.pendingFrom(key) == i+1 })
	}
	before := h.srv.RefusedConnections(RefusedHandshakesPerSource)
	extra := h.dialFrom(t, attacker)
	waitFor(t, "the per-source refusal", func() bool { return h.srv.RefusedConnections(RefusedHandshakesPerSource) > before })
	// Bounded read: a refused connection is closed, so this ends with EOF
	// (or a reset) rather than the deadline.
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection over the per-source bound: read returned %v; want it closed by the server", err)
	}
	if n := h.pendingFrom(key); n > maxPreHandshakePerSource {
		t.Errorf("source %s holds %d pending handshakes; want at most %d", key, n, maxPreHandshakePerSource)
	}
	h.srv.limits.mu.Lock()
	total := h.srv.limits.shakingN
	h.srv.limits.mu.Unlock()
	if total > maxPreHandshake {
		t.Errorf("%d pending handshakes in total; want at most %d", total, maxPreHandshake)
	}
}
