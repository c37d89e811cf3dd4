package wgnet

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netns"
)

// node is one namespace with a device.
type node struct {
	nd      *netns.Node
	dev     *Device
	key     Key
	overlay netip.Addr
}

func (n *node) peer() Peer {
	return Peer{ID: n.nd.Name, PublicKey: n.key.Public(), Endpoint: netip.MustParseAddrPort(n.nd.IP + ":51820"),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(n.overlay, 32)}}
}

// pair is two namespaces on one bridge, each with a strict device, peered.
func pair(t testing.TB) (*node, *node) {
	t.Helper()
	nw := netns.New(t)
	var out []*node
	for i, name := range []string{"p", "q"} {
		n := &node{nd: nw.AddNode(name), overlay: netip.AddrFrom4([4]byte{10, 251, 0, byte(i + 1)})}
		n.key, _ = NewPrivateKey()
		err := n.nd.Do(func() (err error) {
			n.dev, err = Open(Config{Interface: "wgt0", ListenPort: 51820, Address: n.overlay, Own: []netip.Prefix{netip.PrefixFrom(n.overlay, 32)},
				Strict: true, StrictCIDRs: []netip.Prefix{netip.MustParsePrefix("10.251.0.0/16")}}, n.key)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.dev.Close)
		out = append(out, n)
	}
	p, q := out[0], out[1]
	for _, x := range [][2]*node{{p, q}, {q, p}} {
		if err := x[0].nd.Do(func() error { return x[0].dev.SetPeers([]Peer{x[1].peer()}) }); err != nil {
			t.Fatal(err)
		}
	}
	return p, q
}

func listen(t testing.TB, n *node, sink bool) string {
	t.Helper()
	addr := n.overlay.String() + ":7000"
	var ln net.Listener
	if err := n.nd.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if sink {
					io.Copy(io.Discard, c)
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	return addr
}

func dial(n *node, addr string, d time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.nd.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, d); return })
	return c, err
}

// TestDevicePeersRotationAndStrict: two devices talk through the tunnel;
// a rotation (the new key announced as next, then current) keeps an open
// connection; removing the peer stops it; a closed device leaves strict
// mode's blackhole, so nothing to the overlay goes out in clear.
func TestDevicePeersRotationAndStrict(t *testing.T) {
	p, q := pair(t)
	addr := listen(t, q, false)
	c, err := dial(p, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait := 10 * time.Second
	echo := func(msg string) error {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(got, []byte(msg)) {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	if err := echo("through the tunnel"); err != nil {
		t.Fatal(err)
	}
	st, err := p.dev.Stats()
	if err != nil || len(st) != 1 || st[0].LastHandshake.IsZero() || st[0].RxBytes == 0 || p.dev.Handshakes() == 0 {
		t.Fatalf("stats %+v, %v", st, err)
	}

	// q rotates: announce, then switch, as the agent does.
	next, _ := NewPrivateKey()
	np := next.Public()
	ann := q.peer()
	ann.NextKey = &np
	if err := p.nd.Do(func() error { return p.dev.SetPeers([]Peer{ann}) }); err != nil {
		t.Fatal(err)
	}
	if err := q.dev.SetPrivateKey(next); err != nil {
		t.Fatal(err)
	}
	q.key = next
	if err := p.nd.Do(func() error { return p.dev.SetPeers([]Peer{q.peer()}) }); err != nil {
		t.Fatal(err)
	}
	if err := echo("after the rotation"); err != nil {
		t.Fatalf("the connection did not survive the rotation: %v", err)
	}
	if st, _ := p.dev.Stats(); len(st) != 1 || st[0].PublicKey == nil || !bytes.Equal(st[0].PublicKey, np[:]) {
		t.Fatalf("p's peers after the rotation: %+v", st)
	}

	// The peer removed: the connection stops, nothing leaves in clear.
	if err := p.nd.Do(func() error { return p.dev.SetPeers(nil) }); err != nil {
		t.Fatal(err)
	}
	wait = time.Second // a negative check: no answer expected
	if err := echo("after removal"); err == nil {
		t.Fatal("traffic still flows to a removed peer")
	}
	// The device gone (the agent stopped): the blackhole stays.
	p.dev.Close()
	out, err := p.nd.Run("ip", "route", "get", q.overlay.String())
	bh, _ := p.nd.Run("ip", "route", "show", "type", "blackhole")
	if err == nil || !strings.Contains(bh, "10.251.0.0/16") {
		t.Fatalf("with the device closed, %s routes as: %s (err %v); blackhole routes: %s", q.overlay, out, err, bh)
	}
	if c, err := dial(p, q.overlay.String()+":7000", time.Second); err == nil {
		c.Close()
		t.Fatal("with the device closed, p reached q's overlay address")
	}
}

// BenchmarkSetPeersOneChange: a peer list of 1,000 nodes arrives again
// with one node's endpoint changed (what every agent does on each push):
// only that peer is reconfigured, no route is touched.
func BenchmarkSetPeersOneChange(b *testing.B) {
	p, _ := pair(b)
	peers := make([]Peer, 1000)
	for i := range peers {
		k, _ := NewPrivateKey()
		peers[i] = Peer{ID: strconv.Itoa(i), PublicKey: k.Public(), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, byte(i >> 8), byte(i)}), 32)}}
	}
	if err := p.nd.Do(func() error { return p.dev.SetPeers(peers) }); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		peers[0].Endpoint = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i%1000))
		if err := p.dev.SetPeers(peers); err != nil {
			b.Fatal(err)
		}
	}
}

// The attack: an authority (compromised, or misconfigured before it
// refused such overlays) hands a node a peer whose prefixes cover
// loopback, the cloud metadata service, multicast or half the address
// space. The node routes none of them into the tunnel; the overlay
// prefixes beside them still are.
func TestPeerPrefixesOutsideAnyOverlayAreNotRouted(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.250.1.0/24"),
		netip.MustParsePrefix("0.0.0.0/1"),
		netip.MustParsePrefix("127.0.0.1/32"),
		netip.MustParsePrefix("169.254.169.254/32"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("::/1"),
		netip.MustParsePrefix("fd00:77:0:1::/64"),
	}
	ok, dropped := routable(in)
	if len(ok) != 2 || ok[0] != in[0] || ok[1] != in[6] {
		t.Fatalf("routed %v, want only the overlay prefixes", ok)
	}
	if len(dropped) != 5 {
		t.Fatalf("dropped %v, want the five non-overlay prefixes", dropped)
	}
}
