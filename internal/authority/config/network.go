package config

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/wardproject/ward/internal/shared/netrange"
)

// Network configures the WireGuard overlay agents register their tunnels
// in (docs/network.md).
type Network struct {
	// OverlayCIDRs are the ranges agents may claim tunnel prefixes in
	// (allowed_ips): every registered prefix must lie inside one of them.
	// Unset, the WireGuard network is off: every tunnel registration is
	// refused (an agent could otherwise pre-claim any prefix no other
	// agent holds, e.g. a DNS server's /32).
	OverlayCIDRs []string `yaml:"overlay_cidrs"`
	// AdvertisedEndpoints lets an agent register a WireGuard endpoint
	// whose IP is not the address its Node API connection came from
	// (nodes behind NAT, or reached on another interface). Off, such an
	// endpoint is refused: otherwise an agent could name another host's
	// address and make every peer send it handshakes (reflection). On, it
	// needs EndpointCIDRs.
	AdvertisedEndpoints bool `yaml:"advertised_endpoints"`
	// EndpointCIDRs are the ranges the nodes' WireGuard endpoints may be
	// in (every endpoint, advertised or not, must lie inside one).
	// Required with AdvertisedEndpoints.
	EndpointCIDRs []string `yaml:"endpoint_cidrs"`
	// AllowPublicOverlayCIDRs are public ranges (outside RFC 1918,
	// 100.64.0.0/10, 198.18.0.0/15 and fc00::/7) an overlay_cidrs entry
	// may lie in: address space the operator owns and means to route
	// through the mesh. Without it such an overlay is refused, since every
	// node would route traffic for those internet hosts into its tunnel.
	// Agents have the same setting and refuse public peer prefixes their
	// own list does not cover (docs/network.md).
	AllowPublicOverlayCIDRs []string `yaml:"allow_public_overlay_cidrs"`
}

// Overlay returns overlay_cidrs parsed (validate refuses a bad one).
func (n *Network) Overlay() []netip.Prefix { return prefixes(n.OverlayCIDRs) }

// AllowPublic returns allow_public_overlay_cidrs parsed (validate refuses
// a bad one).
func (n *Network) AllowPublic() []netip.Prefix { return prefixes(n.AllowPublicOverlayCIDRs) }

// Endpoints returns endpoint_cidrs parsed (validate refuses a bad one).
func (n *Network) Endpoints() []netip.Prefix { return prefixes(n.EndpointCIDRs) }

func prefixes(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

func (n *Network) validate() error {
	for _, f := range []struct {
		name, example string
		list          []string
	}{{"overlay_cidrs", "10.250.0.0/16", n.OverlayCIDRs}, {"endpoint_cidrs", "192.168.10.0/24", n.EndpointCIDRs},
		{"allow_public_overlay_cidrs", "203.0.113.0/24", n.AllowPublicOverlayCIDRs}} {
		for _, s := range f.list {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("network.%s: %q is not a CIDR prefix (e.g. %s): %v", f.name, s, f.example, err)
			}
			if p.Bits() == 0 {
				return fmt.Errorf("network.%s: %s is every address: name the %s", f.name, s, map[string]string{"overlay_cidrs": "overlay's own range",
					"endpoint_cidrs": "nodes' own network", "allow_public_overlay_cidrs": "public range the overlay uses"}[f.name])
			}
		}
	}
	// Every node routes the overlay into its tunnel: a range over
	// loopback, link-local, multicast, most of the address space or the
	// nodes' own underlay would swallow traffic that is not the overlay's.
	for _, s := range n.AllowPublicOverlayCIDRs {
		if err := netrange.CheckOverlay(netip.MustParsePrefix(s)); err != nil {
			return fmt.Errorf("network.allow_public_overlay_cidrs: %q refused: %v (docs/network.md)", s, err)
		}
	}
	if len(n.AllowPublicOverlayCIDRs) > 0 && len(n.OverlayCIDRs) == 0 {
		return fmt.Errorf("network.allow_public_overlay_cidrs is set but network.overlay_cidrs is not: it only allows overlay ranges in public space")
	}
	for _, s := range n.OverlayCIDRs {
		p := netip.MustParsePrefix(s).Masked()
		if err := netrange.CheckOverlay(p); err != nil {
			return fmt.Errorf("network.overlay_cidrs: %q refused: %v (docs/network.md)", s, err)
		}
		// A public range would route traffic for real internet hosts
		// into the mesh: only with the operator's explicit opt-in.
		if err := netrange.CheckPrivate(p, n.AllowPublic()); err != nil {
			return fmt.Errorf("network.overlay_cidrs: %q refused: %v (docs/network.md)", s, err)
		}
		for _, e := range n.Endpoints() {
			if e.Overlaps(p) {
				return fmt.Errorf("network.overlay_cidrs: %q overlaps network.endpoint_cidrs %s, the nodes' own network: their WireGuard packets would be routed into the tunnels; give the overlay a range of its own (docs/network.md)", s, e)
			}
		}
	}
	if len(n.OverlayCIDRs) == 0 && (n.AdvertisedEndpoints || len(n.EndpointCIDRs) > 0) {
		return fmt.Errorf("network: the WireGuard network needs network.overlay_cidrs, the ranges the nodes' tunnel prefixes lie in (e.g. overlay_cidrs: [10.250.0.0/16]); without it every tunnel registration is refused")
	}
	if n.AdvertisedEndpoints && len(n.EndpointCIDRs) == 0 {
		return fmt.Errorf("network.advertised_endpoints needs network.endpoint_cidrs, the ranges the nodes' WireGuard endpoints may be in (e.g. endpoint_cidrs: [192.168.10.0/24]): otherwise any agent could name any host as its endpoint and make every peer send it handshakes")
	}
	return nil
}

// checkAddresses refuses an overlay range that contains one of the
// authority's own listening addresses (literal IPs): nodes would route
// their Node API or federation traffic into the tunnels.
func (n *Network) checkAddresses(addrs map[string]string) error {
	for field, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.IsUnspecified() {
			continue
		}
		for _, p := range n.Overlay() {
			if p.Contains(ip.Unmap()) {
				return fmt.Errorf("network.overlay_cidrs: %s contains %s (%s): nodes would route the traffic to the authority into their tunnels; give the overlay a range of its own (docs/network.md)", p, a, field)
			}
		}
	}
	return nil
}
