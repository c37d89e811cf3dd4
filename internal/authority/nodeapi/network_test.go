package nodeapi

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

func wgKey(t testing.TB) []byte {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: got %v, want %v containing %q", what, err, code, msg)
	}
}

// networkAgent attests a new agent on h: its SVID and the Node Network
// client of its mTLS connection.
func (h *harness) networkAgent(t *testing.T) (*x509svid.SVID, wardv1.NodeNetworkClient) {
	t.Helper()
	sv, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	return sv, wardv1.NewNodeNetworkClient(h.conn(t, sv))
}

// TestRegisterTunnelIsBoundToTheCaller: a registration is stored under the
// calling agent's own ID; an agent cannot register another node's key or
// subnets, and nobody but a current agent registers at all (no SVID, a
// workload SVID, a forged agent ID, an evicted agent).
func TestRegisterTunnelIsBoundToTheCaller(t *testing.T) {
	h := newHarnessWith(t, allowAdvertised) // endpoints other than the caller's address
	ctx := context.Background()
	svA, a := h.networkAgent(t)
	svB, b := h.networkAgent(t)
	keyA := wgKey(t)
	got, err := a.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: keyA, ListenPort: 51820, AllowedIps: []string{"10.250.1.1/32", "10.250.1.0/24"}})
	if err != nil {
		t.Fatal(err)
	}
	if got.AgentId != svA.ID.String() || got.Endpoint != "127.0.0.1:51820" || len(got.AllowedIps) != 2 {
		t.Fatalf("registered %+v", got)
	}

	// B claims A's key, A's subnet, or a whole-range prefix: refused.
	_, err = b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: keyA, ListenPort: 51820, AllowedIps: []string{"10.250.2.0/24"}})
	wantCode(t, "B registering A's key", err, codes.PermissionDenied, "registered to "+svA.ID.String())
	_, err = b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), NextPublicKey: keyA, ListenPort: 51820, AllowedIps: []string{"10.250.2.0/24"}})
	wantCode(t, "B announcing A's key as its next", err, codes.PermissionDenied, "registered to")
	_, err = b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 51820, AllowedIps: []string{"10.250.1.7/32"}})
	wantCode(t, "B claiming an address in A's subnet", err, codes.PermissionDenied, "overlaps")
	_, err = b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 51820, AllowedIps: []string{"0.0.0.0/0"}})
	wantCode(t, "B claiming everything", err, codes.InvalidArgument, "route everything")
	for _, bad := range []*wardv1.RegisterTunnelRequest{
		{PublicKey: []byte("short"), ListenPort: 1, AllowedIps: []string{"10.9.0.0/24"}},
		{PublicKey: make([]byte, 32), ListenPort: 1, AllowedIps: []string{"10.9.0.0/24"}},
		{PublicKey: wgKey(t), Endpoint: "node-b.example:51820", AllowedIps: []string{"10.9.0.0/24"}},
		{PublicKey: wgKey(t), ListenPort: 1},
		{PublicKey: wgKey(t), ListenPort: 1, AllowedIps: []string{"10.9.0.0"}},
		{PublicKey: wgKey(t), AllowedIps: []string{"10.9.0.0/24"}},
	} {
		_, err := b.RegisterTunnel(ctx, bad)
		wantCode(t, "bad request", err, codes.InvalidArgument, "")
	}
	keyB := wgKey(t)
	if _, err := b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: keyB, Endpoint: "10.0.0.2:51820", AllowedIps: []string{"10.250.2.0/24"}}); err != nil {
		t.Fatal(err)
	}

	// Not an agent: refused before the service.
	_, err = wardv1.NewNodeNetworkClient(h.conn(t, nil)).RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 1, AllowedIps: []string{"10.9.0.0/24"}})
	wantCode(t, "no SVID", err, codes.Unauthenticated, "")
	_, err = wardv1.NewNodeNetworkClient(h.conn(t, h.caSigned(t, "/app/payments"))).RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 1, AllowedIps: []string{"10.9.0.0/24"}})
	wantCode(t, "workload SVID", err, codes.Unauthenticated, "not an agent ID")
	_, err = wardv1.NewNodeNetworkClient(h.conn(t, h.caSigned(t, "/ward/agent/join_token/forged"))).RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 1, AllowedIps: []string{"10.9.0.0/24"}})
	wantCode(t, "forged agent ID", err, codes.PermissionDenied, "not registered")

	// The peer list: both, then B's eviction removes B's key at once
	// (pushed, not polled), and B may no longer register.
	stream, err := a.WatchPeers(ctx, &wardv1.WatchPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(pl.Peers) != 2 || !bytes.Equal(pl.Peers[0].PublicKey, keyA) && !bytes.Equal(pl.Peers[1].PublicKey, keyA) {
		t.Fatalf("peer list %v", pl.Peers)
	}
	// B's own stream, open before its eviction, ends with it.
	bOpen, err := b.WatchPeers(ctx, &wardv1.WatchPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bOpen.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.reg.EvictAgent(ctx, svB.ID, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan *wardv1.PeerList, 1)
	go func() {
		pl, err := stream.Recv()
		if err != nil {
			t.Error(err)
		}
		done <- pl
	}()
	select {
	case pl := <-done:
		if pl == nil || len(pl.Peers) != 1 || pl.Peers[0].AgentId != svA.ID.String() {
			t.Fatalf("after eviction: %v", pl)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no peer list after the eviction")
	}
	_, err = bOpen.Recv()
	wantCode(t, "evicted agent's open stream", err, codes.PermissionDenied, "evicted")
	_, err = b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: keyB, Endpoint: "10.0.0.2:51820", AllowedIps: []string{"10.250.2.0/24"}})
	wantCode(t, "evicted agent", err, codes.PermissionDenied, "evicted")
	bs, err := b.WatchPeers(ctx, &wardv1.WatchPeersRequest{})
	if err == nil {
		_, err = bs.Recv()
	}
	wantCode(t, "evicted agent watching", err, codes.PermissionDenied, "evicted")
}

// TestRegisterTunnelCannotHijackUnderlay runs the route hijack: every peer
// routes a node's allowed IPs into that node's tunnel, so a compromised
// agent registering prefixes that cover the authority's address, another
// node's endpoint or the whole space in halves (0.0.0.0/1 + 128.0.0.0/1
// slips past the /0 check) would pull the peers' Node API connections and
// WireGuard packets to itself. All refused, nothing stored.
func TestRegisterTunnelCannotHijackUnderlay(t *testing.T) {
	h := newHarnessWith(t, allowAdvertised) // endpoints other than the caller's address
	ctx := context.Background()
	svA, a := h.networkAgent(t)
	_, b := h.networkAgent(t)
	if _, err := a.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: "192.0.2.10:51820", AllowedIps: []string{"10.250.1.1/32"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what    string
		ep      string
		allowed []string
		code    codes.Code
		msg     string
	}{
		// The harness's authority listens on 127.0.0.1.
		{"the authority's address", "198.51.100.2:51820", []string{"10.250.2.1/32", "127.0.0.1/32"}, codes.PermissionDenied, "authority's address"},
		{"everything in two halves", "198.51.100.2:51820", []string{"0.0.0.0/1", "128.0.0.0/1"}, codes.InvalidArgument, "covers"},
		{"another node's endpoint", "198.51.100.2:51820", []string{"10.250.2.1/32", "192.0.2.10/32"}, codes.PermissionDenied, "endpoint 192.0.2.10:51820"},
		{"its own endpoint (a loop)", "198.51.100.2:51820", []string{"10.250.2.1/32", "198.51.100.0/24"}, codes.InvalidArgument, "own endpoint"},
	} {
		_, err := b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: tc.ep, AllowedIps: tc.allowed})
		wantCode(t, tc.what, err, tc.code, tc.msg)
	}
	ts, err := h.reg.Tunnels(ctx, true)
	if err != nil || len(ts) != 1 || ts[0].AgentID != svA.ID.String() {
		t.Fatalf("stored tunnels after the refused hijacks: %v, %v", ts, err)
	}
	// B's own overlay prefixes are fine.
	if _, err := b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: "198.51.100.2:51820", AllowedIps: []string{"10.250.2.1/32", "10.250.2.0/24"}}); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterTunnelFlood runs a compromised agent flipping its
// registration as fast as it can (each change is a store write, an audit
// event and a new peer list for every agent): past a burst it is refused
// until its budget refills; the other agents' registrations are not
// affected.
func TestRegisterTunnelFlood(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	_, a := h.networkAgent(t)
	_, b := h.networkAgent(t)
	key := wgKey(t)
	accepted := 0
	for i := range 3 * tunnelBurst {
		_, err := b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: key, ListenPort: uint32(40000 + i), AllowedIps: []string{"10.250.2.1/32"}})
		if status.Code(err) == codes.ResourceExhausted {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		accepted++
	}
	if accepted >= 3*tunnelBurst {
		t.Fatalf("%d registration changes in a row were all accepted", accepted)
	}
	if _, err := a.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), ListenPort: 51820, AllowedIps: []string{"10.250.1.1/32"}}); err != nil {
		t.Fatalf("another agent's registration: %v", err)
	}
	h.clock.Advance(tunnelBurst * tunnelRefill)
	if _, err := b.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: key, ListenPort: 51820, AllowedIps: []string{"10.250.2.1/32"}}); err != nil {
		t.Fatalf("after the budget refilled: %v", err)
	}
}

func allowAdvertised(c *Config) { c.AdvertisedEndpoints = true }

// TestRegisterTunnelEndpointIsTheCaller (red team): unless the authority
// allows advertised endpoints (network.advertised_endpoints), an agent
// cannot register another host's address as its endpoint, which would
// have every peer send that host its handshakes (reflection); its own
// address, or listen_port alone, is accepted.
func TestRegisterTunnelEndpointIsTheCaller(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	_, c := h.networkAgent(t)
	for _, ep := range []string{"192.0.2.53:51820", "[::1]:51820", "127.0.0.2:51820"} {
		_, err := c.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: ep, AllowedIps: []string{"10.250.1.1/32"}})
		if code(err) != codes.PermissionDenied {
			t.Fatalf("registering another host's endpoint %s: %v", ep, err)
		}
	}
	got, err := c.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: "127.0.0.1:40000", AllowedIps: []string{"10.250.1.1/32"}})
	if err != nil || got.Endpoint != "127.0.0.1:40000" {
		t.Fatalf("its own address: %v %v", got, err)
	}

	h2 := newHarnessWith(t, allowAdvertised)
	_, c2 := h2.networkAgent(t)
	if _, err := c2.RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t), Endpoint: "192.0.2.53:51820", AllowedIps: []string{"10.250.1.1/32"}}); err != nil {
		t.Fatalf("with advertised endpoints allowed: %v", err)
	}
}
