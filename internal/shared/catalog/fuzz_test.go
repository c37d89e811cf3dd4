package catalog

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// FuzzGatewayAllow: a gateway address from a peer's catalog never
// panics the matcher, and one that is permitted is host:port whose host
// is allowed by an entry (an IP inside the prefix, or the named host).
func FuzzGatewayAllow(f *testing.F) {
	allow, err := ParseGatewayAllow([]string{"10.20.0.0/16", "gw.b.example:15443", "*.edge.b.example:*", "192.0.2.7:15443"})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"10.20.1.1:1", "gw.b.example:15443", "a.edge.b.example:9", "[::ffff:10.20.0.1]:1", "x:1", ":", "[]:1", "edge.b.example:1", "192.0.2.7.:15443", "[::ffff:192.0.2.7]:15443", ".edge.b.example:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, gw string) {
		if !allow.Permits(gw) {
			return
		}
		h, _, err := net.SplitHostPort(gw)
		if err != nil {
			t.Fatalf("%q permitted without host:port", gw)
		}
		// What is permitted is what a dialer takes for what it is: an IP
		// address, or a host name (never a name spelling an address).
		if err := CheckHostPort(gw); err != nil {
			t.Fatalf("%q permitted, yet not host:port: %v", gw, err)
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			if ip.Unmap() == netip.MustParseAddr("192.0.2.7") && strings.HasSuffix(gw, ":15443") {
				return
			}
			if !netip.MustParsePrefix("10.20.0.0/16").Contains(ip.Unmap()) {
				t.Fatalf("%q permitted outside the prefix", gw)
			}
			return
		}
		if !ValidHostName(h) {
			t.Fatalf("%q permitted: host %q is no host name", gw, h)
		}
		l := strings.ToLower(strings.TrimSuffix(h, "."))
		if l != "gw.b.example" && !strings.HasSuffix(l, ".edge.b.example") {
			t.Fatalf("%q permitted: host %q matches no entry", gw, h)
		}
	})
}
