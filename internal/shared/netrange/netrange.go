// Package netrange names the address ranges an overlay network (the
// WireGuard tunnels' prefixes, docs/network.md) must never contain, and the
// widest overlay prefix accepted: a node routes every overlay prefix into
// its tunnel, so a prefix over loopback, link-local, multicast or most of
// the address space would swallow traffic that is not the overlay's. The
// authority refuses such network.overlay_cidrs (config) and agents refuse
// such peer prefixes (wgnet), whatever the authority sends.
package netrange

import (
	"fmt"
	"net/netip"
)

// Shortest prefix lengths accepted for an overlay range: an IPv4 overlay
// at most a /8 (10.0.0.0/8 is the largest private block), an IPv6 one at
// most a /16 (a ULA /48 is the usual choice; fc00::/7 itself is refused).
const (
	MinBits4 = 8
	MinBits6 = 16
)

// Special is one range an overlay must not overlap.
type Special struct {
	Prefix netip.Prefix
	Name   string
}

// Specials are the ranges no overlay prefix may overlap: traffic there
// never belongs to a tunnel.
var Specials = []Special{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16, cloud metadata services)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"},
	{netip.MustParsePrefix("::/128"), "the unspecified address (::)"},
	{netip.MustParsePrefix("::1/128"), "loopback (::1)"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped addresses (::ffff:0:0/96)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
	// IPv6 ranges that carry IPv4 addresses: a node routing one into its
	// tunnel would send its NAT64 (DNS64 answers for every IPv4-only name),
	// 6to4 or Teredo traffic, IPv4 loopback and metadata included, to a
	// peer.
	{netip.MustParsePrefix("::/96"), "IPv4-compatible addresses (::/96)"},
	{netip.MustParsePrefix("64:ff9b::/96"), "the NAT64 prefix (64:ff9b::/96)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"},
	{netip.MustParsePrefix("2001::/32"), "Teredo (2001::/32)"},
	{netip.MustParsePrefix("2002::/16"), "6to4 (2002::/16)"},
}

// CheckOverlay says why p may not be (part of) an overlay: wider than
// MinBits4/MinBits6, or overlapping a Special range. nil when it may.
func CheckOverlay(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%s is not a valid prefix", p)
	}
	p = p.Masked()
	if p.Addr().Is4() && p.Bits() < MinBits4 || p.Addr().Is6() && p.Bits() < MinBits6 {
		min := MinBits4
		if p.Addr().Is6() {
			min = MinBits6
		}
		return fmt.Errorf("%s is wider than /%d: nodes would route that much of the address space into their tunnels; name the overlay's own range (e.g. 10.250.0.0/16 or fd00:77::/48)", p, min)
	}
	for _, s := range Specials {
		if s.Prefix.Overlaps(p) {
			return fmt.Errorf("%s overlaps %s: traffic there never belongs in a tunnel; choose a private range outside it (e.g. 10.250.0.0/16 or fd00:77::/48)", p, s.Name)
		}
	}
	return nil
}
