// Package netrange names the address ranges an overlay network (the
// WireGuard tunnels' prefixes, docs/network.md) must never contain, and the
// widest overlay prefix accepted: a node routes every overlay prefix into
// its tunnel, so a prefix over loopback, link-local, multicast or most of
// the address space would swallow traffic that is not the overlay's. The
// authority refuses such network.overlay_cidrs (config) and agents refuse
// such peer prefixes (wgnet), whatever the authority sends. An overlay must
// also lie in private or shared address space (Private) unless the
// operator named the public range in allow_public_overlay_cidrs: routing a
// public range into the mesh would send traffic for real internet hosts
// to a peer.
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

// Private are the ranges an overlay may use without an opt-in: address
// space no internet host has, so routing it into the mesh takes nobody's
// traffic but the mesh's.
var Private = []Special{
	{netip.MustParsePrefix("10.0.0.0/8"), "private (RFC 1918)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (RFC 1918)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (RFC 6598, carrier-grade NAT; Tailscale-style overlays)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (RFC 2544, never routed on the internet)"},
	{netip.MustParsePrefix("fc00::/7"), "unique local (RFC 4193)"},
}

// AllowPublicSetting is the setting (authority and agent alike) that lets
// an overlay range outside Private be used.
const AllowPublicSetting = "network.allow_public_overlay_cidrs"

// IsPrivate reports whether p lies entirely inside one Private range.
func IsPrivate(p netip.Prefix) bool {
	return within(p.Masked(), Private)
}

func within(p netip.Prefix, in []Special) bool {
	for _, r := range in {
		if r.Prefix.Bits() <= p.Bits() && r.Prefix.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Covered reports whether p lies entirely inside one of ranges.
func Covered(p netip.Prefix, ranges []netip.Prefix) bool {
	p = p.Masked()
	for _, r := range ranges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// CheckPrivate says why p may not be an overlay range as far as address
// space goes: it is (partly) public and lies inside none of allowPublic
// (the operator's allow_public_overlay_cidrs). nil when it may. It does
// not repeat CheckOverlay.
func CheckPrivate(p netip.Prefix, allowPublic []netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%s is not a valid prefix", p)
	}
	p = p.Masked()
	if IsPrivate(p) || Covered(p, allowPublic) {
		return nil
	}
	return fmt.Errorf("%s is public address space (not inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 198.18.0.0/15 or fc00::/7): "+
		"nodes would route traffic for real internet hosts there into the mesh; use a private range (e.g. 10.250.0.0/16 or fd00:77::/48), "+
		"or, for public space you own and mean to route through the mesh, list it in %s", p, AllowPublicSetting)
}
