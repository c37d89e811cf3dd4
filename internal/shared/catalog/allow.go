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
	hosts    []hostPattern
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
		a.hosts = append(a.hosts, hostPattern{host: strings.ToLower(strings.TrimSuffix(h, ".")), port: port})
	}
	return a, nil
}

// Empty reports whether no entry was given.
func (a GatewayAllow) Empty() bool { return len(a.prefixes) == 0 && len(a.hosts) == 0 }

// Permits reports whether gateway (host:port, as CheckHostPort accepts)
// matches an entry.
func (a GatewayAllow) Permits(gateway string) bool {
	h, port, err := net.SplitHostPort(gateway)
	if err != nil {
		return false
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		ip = ip.Unmap()
		for _, p := range a.prefixes {
			if p.Contains(ip) {
				return true
			}
		}
		for _, hp := range a.hosts {
			if want, err := netip.ParseAddr(hp.host); err == nil && want.Unmap() == ip && (hp.port == "*" || hp.port == port) {
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
