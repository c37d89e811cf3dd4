package catalog

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// MaxGatewayPatterns bounds the allowed_gateways of one relationship.
const MaxGatewayPatterns = 64

// GatewayAllow is where a federated trust domain's gateways may be: the
// allowed_gateways of its relationship (docs/federation.md). A service
// of that trust domain whose gateway is elsewhere is refused, so a peer
// cannot make this cluster's proxies dial an address of its choosing.
type GatewayAllow struct {
	prefixes []netip.Prefix
	addrs    []addrPattern // IP addresses: they match addresses only
	hosts    []hostPattern // host names: they match names only
}

// addrPattern is ip:port where port may be "*".
type addrPattern struct {
	ip   netip.Addr
	port string
}

// hostPattern is host:port where host may start with "*." (one or more
// labels) and port may be "*".
type hostPattern struct {
	host string // lower case; "*.x" matches names under x
	port string // "*" or a number
}

// ParseGatewayAllow parses allowed_gateways entries: a CIDR prefix
// ("10.20.0.0/16": any gateway whose host is an IP address in it, any
// port) or host:port ("gw.b.example:15443", "*.gw.b.example:15443",
// "gw.b.example:*", "[2001:db8::1]:15443"). An IP address in host:port
// matches that address only.
func ParseGatewayAllow(entries []string) (GatewayAllow, error) {
	var a GatewayAllow
	if len(entries) > MaxGatewayPatterns {
		return a, fmt.Errorf("allowed_gateways: %d entries, at most %d", len(entries), MaxGatewayPatterns)
	}
	for _, e := range entries {
		if p, err := netip.ParsePrefix(e); err == nil {
			if p.Bits() == 0 {
				return a, fmt.Errorf("allowed_gateways: %q allows every address: name the gateways' prefix", e)
			}
			a.prefixes = append(a.prefixes, p.Masked())
			continue
		}
		h, port, err := net.SplitHostPort(e)
		if err != nil || h == "" || port == "" {
			return a, fmt.Errorf("allowed_gateways: %q: give a CIDR prefix (10.20.0.0/16) or host:port (gw.b.example:15443, *.b.example:15443, gw.b.example:*)", e)
		}
		if ip, err := netip.ParseAddr(h); strings.HasPrefix(e, "[") && (err != nil || !ip.Is6()) {
			return a, fmt.Errorf("allowed_gateways: %q: only an IPv6 address goes in brackets", e)
		}
		if port != "*" {
			if err := CheckHostPort(net.JoinHostPort(strings.TrimPrefix(h, "*."), port)); err != nil {
				return a, fmt.Errorf("allowed_gateways: %v", err)
			}
		}
		rest := strings.TrimPrefix(h, "*.")
		if rest == "" || strings.Contains(rest, "*") || strings.ContainsAny(rest, " /\t\r\n") {
			return a, fmt.Errorf("allowed_gateways: %q: a wildcard is only a leading \"*.\" of a host name", e)
		}
		if _, err := netip.ParseAddr(rest); err == nil && rest != h {
			return a, fmt.Errorf("allowed_gateways: %q: a wildcard applies to host names; give IP ranges as CIDR prefixes", e)
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			a.addrs = append(a.addrs, addrPattern{ip: ip.Unmap(), port: port})
			continue
		}
		if !ValidHostName(rest) {
			return a, fmt.Errorf("allowed_gateways: %q: %q is neither an IP address nor a DNS host name", e, h)
		}
		a.hosts = append(a.hosts, hostPattern{host: strings.ToLower(strings.TrimSuffix(h, ".")), port: port})
	}
	return a, nil
}

// Empty reports whether no entry was given.
func (a GatewayAllow) Empty() bool {
	return len(a.prefixes) == 0 && len(a.addrs) == 0 && len(a.hosts) == 0
}

// Permits reports whether gateway (host:port, as CheckHostPort accepts:
// anything else is refused) matches an entry. An address matches the
// prefixes and addresses, a name the names only ("192.0.2.7.:15443" is a
// name to resolve, not the address 192.0.2.7).
func (a GatewayAllow) Permits(gateway string) bool {
	if CheckHostPort(gateway) != nil {
		return false
	}
	h, port, _ := net.SplitHostPort(gateway)
	if ip, err := netip.ParseAddr(h); err == nil {
		ip = ip.Unmap()
		for _, p := range a.prefixes {
			if p.Contains(ip) {
				return true
			}
		}
		for _, ap := range a.addrs {
			if ap.ip == ip && (ap.port == "*" || ap.port == port) {
				return true
			}
		}
		return false
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	for _, hp := range a.hosts {
		if hp.port != "*" && hp.port != port {
			continue
		}
		if suffix, ok := strings.CutPrefix(hp.host, "*."); ok {
			if strings.HasSuffix(h, "."+suffix) {
				return true
			}
		} else if h == hp.host {
			return true
		}
	}
	return false
}
