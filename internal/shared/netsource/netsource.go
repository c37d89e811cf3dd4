// Package netsource names the source of a network connection for
// per-source limits (the Node API's and the proxy's): one host is one
// source, whichever port it connects from.
package netsource

import "net"

// Key names the source of a connection from its remote address a: the
// IPv4 address, or the IPv6 /64 (the block one host usually has); "" when
// a is not a TCP address (unix sockets: no per-source limit).
func Key(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP == nil {
		return ""
	}
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
