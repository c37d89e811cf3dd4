package config

import (
	"fmt"
	"net/netip"
)

// Network configures the WireGuard overlay agents register their tunnels
// in (docs/network.md).
type Network struct {
	// OverlayCIDRs are the ranges agents may claim tunnel prefixes in
	// (allowed_ips): every registered prefix must lie inside one of them.
	// Unset, an agent may claim any prefix no other current agent holds
	// (besides the checks on endpoints and the authority's address),
	// e.g. a DNS server's /32 on a node without strict mode: the
	// authority warns at start. Set it in production.
	OverlayCIDRs []string `yaml:"overlay_cidrs"`
	// AdvertisedEndpoints lets an agent register a WireGuard endpoint
	// whose IP is not the address its Node API connection came from
	// (nodes behind NAT, or reached on another interface). Off, such an
	// endpoint is refused: otherwise an agent could name another host's
	// address and make every peer send it handshakes (reflection).
	AdvertisedEndpoints bool `yaml:"advertised_endpoints"`
}

// Overlay returns overlay_cidrs parsed (validate refuses a bad one).
func (n *Network) Overlay() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range n.OverlayCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

func (n *Network) validate() error {
	for _, s := range n.OverlayCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("network.overlay_cidrs: %q is not a CIDR prefix (e.g. 10.250.0.0/16): %v", s, err)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("network.overlay_cidrs: %s is every address: name the overlay's own range", s)
		}
	}
	return nil
}
