package nodeapi

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// attacker is the source the attacks below come from; legitimate agents
// and nodes connect from 127.0.0.1 (the harness's default).
var attacker = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}

// dialFrom opens a TCP connection to the Node API from src.
func (h *harness) dialFrom(t testing.TB, src *net.TCPAddr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatalf("dialing the Node API from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond (bounded: 30s in 10ms steps, room for a loaded race-enabled run).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 3000 {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// syncCtx bounds a legitimate call made while an attack runs: shorter
// than the old 10s handshake timeout, so a stalled accept loop fails it.
func syncCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestIdleTCPConnectionsDoNotBlockAgents runs the attack: 128 TCP
// connections from one source that never send a byte. Before, they took
// every pre-handshake slot and accept waited for one, so every agent's
// Sync timed out; now the source gets maxPreHandshakePerSource of them,
// the rest are closed at once, and agents elsewhere are served.
func TestIdleTCPConnectionsDoNotBlockAgents(t *testing.T) {
	var hooked atomic.Int64 // the metric hook sees every refusal
	h := newHarnessWith(t, func(c *Config) {
		c.OnConnRefused = func(reason string) {
			if reason == RefusedHandshakesPerSource {
				hooked.Add(1)
			}
		}
	})
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	client := h.client(t, agent) // its own connection, dialed below after the attack
	for range 128 {
		h.dialFrom(t, attacker)
	}
	waitFor(t, "the server to refuse the attacker's excess connections", func() bool {
		return h.srv.RefusedConnections(RefusedHandshakesPerSource) >= 128-maxPreHandshakePerSource
	})
	// One more from the attacker is closed without waiting for the handshake timeout.
	c := h.dialFrom(t, attacker)
	c.SetReadDeadline(time.Now().Add(4 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection over the per-source handshake limit: read %d, %v; want it closed", n, err)
	}
	if n := hooked.Load(); n < 128-maxPreHandshakePerSource {
		t.Fatalf("OnConnRefused saw %d refusals; want at least %d", n, 128-maxPreHandshakePerSource)
	}
	if _, err := client.Sync(syncCtx(t), &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("agent Sync from another source while 128 idle connections are open: %v", err)
	}
	if _, err := h.attestCtx(syncCtx(t), t, h.token(t)); err != nil {
		t.Fatalf("node attestation from another source while 128 idle connections are open: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestIdleAnonymousConnectionsDoNotBlockAttestation runs the attack: 1024
// certificate-less TLS connections from one source that send the HTTP/2
// preface and then sit idle. Before, they filled the global limit of
// anonymous connections, so every new attestation was closed; now the
// source keeps maxAnonPerSource of them and a node elsewhere attests.
func TestIdleAnonymousConnectionsDoNotBlockAttestation(t *testing.T) {
	h := newHarness(t)
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeID(ServerID(testTD)))
	tc.NextProtos = []string{"h2"}
	const attack = 256 // 32 times the per-source cap; more only slows the race-enabled run
	var (
		mu   sync.Mutex
		open []net.Conn
		wg   sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	work := make(chan struct{}, attack)
	for range attack {
		work <- struct{}{}
	}
	close(work)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				d := net.Dialer{LocalAddr: attacker, Timeout: 5 * time.Second}
				raw, err := d.Dial("tcp", h.addr)
				if err != nil {
					continue
				}
				c := tls.Client(raw, tc)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err = c.HandshakeContext(ctx)
				cancel()
				if err == nil {
					// HTTP/2 client preface and an empty SETTINGS frame, then nothing.
					_, err = c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0))
				}
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the server to refuse the attacker's excess anonymous connections", func() bool {
		return h.srv.RefusedConnections(RefusedAnonPerSource)+h.srv.RefusedConnections(RefusedHandshakesPerSource) >= attack-maxAnonPerSource
	})
	h.srv.limits.mu.Lock()
	held := h.srv.limits.anon[attacker.IP.String()]
	h.srv.limits.mu.Unlock()
	if held > maxAnonPerSource {
		t.Fatalf("the attacker holds %d anonymous connections; want at most %d", held, maxAnonPerSource)
	}
	agent, err := h.attestCtx(syncCtx(t), t, h.token(t))
	if err != nil {
		t.Fatalf("node attestation from another source during the attack: %v", err)
	}
	if _, err := h.client(t, agent).Sync(syncCtx(t), &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("agent Sync during the attack: %v", err)
	}
}

// attestCtx is attest with a deadline.
func (h *harness) attestCtx(ctx context.Context, t testing.TB, token string) (*x509svid.SVID, error) {
	t.Helper()
	stream, err := h.client(t, nil).Attest(ctx)
	if err != nil {
		return nil, err
	}
	der, key := csr(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: der, Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: token}}}); err != nil {
		return nil, err
	}
	r, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return svidOf(t, r.GetSvid().GetChain(), key), nil
}

// TestRefusedAgentSVIDGetsSmallLimits runs the attack: an evicted agent
// (and a /ward/ SVID that is no agent) sends a 30 MiB SignX509SVIDs.
// Before, its verified certificate got the main server, which read the
// whole message before authenticate refused it; now route sends it to
// the anonymous server, which refuses it by its announced size
// (ResourceExhausted) before reading it, and answers small calls with the
// eviction.
func TestRefusedAgentSVIDGetsSmallLimits(t *testing.T) {
	h, _ := newAuthHarness(t)
	ctx := context.Background()
	evicted, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.reg.EvictAgent(ctx, evicted.ID, nil); err != nil {
		t.Fatal(err)
	}
	big := &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{Csr: make([]byte, 30<<20)}}}
	for _, tc := range []struct {
		name string
		svid *x509svid.SVID
	}{{"evicted agent", evicted}, {"spiffe://TD/ward/server", h.caSigned(t, "/ward/server")}} {
		_, err := h.client(t, tc.svid).SignX509SVIDs(ctx, big)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "received message larger than max") {
			t.Fatalf("%s: 30 MiB SignX509SVIDs: %v; want ResourceExhausted by size, before the message is read", tc.name, err)
		}
	}
	_, err = h.client(t, evicted).Sync(ctx, &wardv1.SyncRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "agent evicted: attest again") {
		t.Fatalf("evicted agent's Sync: %v; want the eviction", err)
	}
	// A current agent still gets the main server's limits.
	current, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.client(t, current).SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{Csr: make([]byte, 1<<20)}}})
	if status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("current agent's 1 MiB SignX509SVIDs was refused by size: %v", err)
	}
}

// TestSupersededAgentSVIDCannotRenew runs the attack: a stolen agent SVID
// that a renewal superseded, used within the grace after the real agent
// used its new one. Sync still works (so calls in flight finish);
// RenewAgent is refused, so its holder cannot
// make its own certificate current and lock the real agent out.
func TestSupersededAgentSVIDCannotRenew(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	old, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	der, key := csr(t)
	r, err := h.client(t, old).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
	if err != nil {
		t.Fatal(err)
	}
	cur := svidOf(t, r.Chain, key)
	// The real agent uses its new SVID (until then the old one may renew
	// again: TestLostRenewalResponseRetry).
	if _, err := h.client(t, cur).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("the new SVID's Sync: %v", err)
	}
	stolen := h.client(t, old)
	if _, err := stolen.Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("superseded SVID within the grace, Sync: %v; want allowed", err)
	}
	der2, _ := csr(t)
	_, err = stolen.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der2})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "only the current agent SVID may renew") {
		t.Fatalf("superseded SVID within the grace, RenewAgent: %v; want PermissionDenied", err)
	}
	der3, _ := csr(t)
	if _, err := h.client(t, cur).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der3}); err != nil {
		t.Fatalf("the real agent's renewal after the attack: %v", err)
	}
}
