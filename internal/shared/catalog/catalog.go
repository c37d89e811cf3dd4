// Package catalog is the form of exported services (docs/gateway.md): what
// an authority publishes with `ward service export`, what federated
// authorities exchange, what the policy stream carries to proxies and
// gateways, and how an outbound listener names one (`payments@b.example`).
package catalog

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/sniname"
)

// MaxServices bounds the services of one trust domain.
const MaxServices = 1000

// Service is one exported service of a trust domain.
type Service struct {
	// Name is one DNS label (sniname.CheckService): the gateway routes
	// <name>.<trust domain>.ward to it.
	Name string `json:"name"`
	// SPIFFEID is the identity its inbound proxy presents; callers require
	// it. Always of the exporting trust domain.
	SPIFFEID string `json:"spiffe_id"`
	// Gateway is the host:port of the exporting cluster's gateway, where
	// other clusters connect.
	Gateway string `json:"gateway"`
	// Forward is the inbound proxy listener the cluster's own gateways
	// forward to (host:port or unix:///path). Only in the exporting
	// trust domain: never sent to federated authorities.
	Forward string `json:"forward,omitempty"`
}

// SNI is the server name a caller sends for s of trust domain td.
func (s Service) SNI(td string) (string, error) { return sniname.For(s.Name, td) }

// Check validates the services of trust domain td: names, identities of
// td only, gateway addresses, forward addresses, no duplicates, at most
// MaxServices. It returns them sorted by name.
func Check(td string, svcs []Service) ([]Service, error) {
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil || t.Name() != td {
		return nil, fmt.Errorf("catalog: %q is not a trust domain name", td)
	}
	if len(svcs) > MaxServices {
		return nil, fmt.Errorf("catalog of %s: %d services, more than the limit of %d", td, len(svcs), MaxServices)
	}
	out := slices.Clone(svcs)
	slices.SortFunc(out, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	for i, s := range out {
		if err := CheckOne(td, s); err != nil {
			return nil, err
		}
		if i > 0 && out[i-1].Name == s.Name {
			return nil, fmt.Errorf("catalog of %s: service %q is listed twice", td, s.Name)
		}
	}
	return out, nil
}

// CheckOne validates one service of trust domain td.
func CheckOne(td string, s Service) error {
	if _, err := sniname.For(s.Name, td); err != nil {
		return fmt.Errorf("catalog of %s: %v", td, err)
	}
	id, err := spiffeid.FromString(s.SPIFFEID)
	if err != nil {
		return fmt.Errorf("catalog of %s: service %s: spiffe_id %q: %v", td, s.Name, s.SPIFFEID, err)
	}
	if id.TrustDomain().Name() != td {
		return fmt.Errorf("catalog of %s: service %s names %s, an identity of trust domain %s: a trust domain only exports its own services", td, s.Name, id, id.TrustDomain().Name())
	}
	if err := CheckHostPort(s.Gateway); err != nil {
		return fmt.Errorf("catalog of %s: service %s: gateway: %v", td, s.Name, err)
	}
	if s.Forward != "" {
		if p, ok := strings.CutPrefix(s.Forward, "unix://"); ok {
			if !strings.HasPrefix(p, "/") {
				return fmt.Errorf("catalog of %s: service %s: forward %q: a unix socket needs an absolute path", td, s.Name, s.Forward)
			}
		} else if err := CheckHostPort(s.Forward); err != nil {
			return fmt.Errorf("catalog of %s: service %s: forward: %v", td, s.Name, err)
		}
	}
	return nil
}

// CheckHostPort accepts host:port whose host is an IP address (IPv6 in
// brackets) or a DNS host name (labels of letters, digits, '-' and '_',
// 1..63 bytes each, at most 253 in all, one trailing dot allowed, the last
// label not all digits: "10.0.0.1." or "0300.0.2.7" would be a name some
// resolvers read as an address), and a port 1..65535.
func CheckHostPort(a string) error {
	h, p, err := net.SplitHostPort(a)
	if err != nil || h == "" {
		return fmt.Errorf("%q: give host:port", a)
	}
	if strings.HasPrefix(a, "[") {
		if ip, err := netip.ParseAddr(h); err != nil || !ip.Is6() {
			return fmt.Errorf("%q: only an IPv6 address goes in brackets", a)
		}
	} else if _, err := netip.ParseAddr(h); err != nil && !ValidHostName(h) {
		return fmt.Errorf("%q: host %q is neither an IP address nor a DNS host name", a, h)
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number 1..65535", a, p)
	}
	return nil
}

// ValidHostName reports whether h is a DNS host name as CheckHostPort
// takes them.
func ValidHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// Ref is how an outbound listener names a service: name@trust domain.
type Ref struct{ Name, TrustDomain string }

func (r Ref) String() string { return r.Name + "@" + r.TrustDomain }

// ParseRef parses "payments@b.example".
func ParseRef(s string) (Ref, error) {
	name, td, ok := strings.Cut(s, "@")
	if !ok {
		return Ref{}, fmt.Errorf("service %q: give name@trust domain, e.g. payments@b.example", s)
	}
	if _, err := sniname.For(name, td); err != nil {
		return Ref{}, fmt.Errorf("service %q: %v", s, err)
	}
	if t, err := spiffeid.TrustDomainFromString(td); err != nil || t.Name() != td {
		return Ref{}, fmt.Errorf("service %q: %q is not a trust domain name", s, td)
	}
	return Ref{Name: name, TrustDomain: td}, nil
}

// Find returns the service name in svcs.
func Find(svcs []Service, name string) (Service, bool) {
	for _, s := range svcs {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// Public returns svcs without what stays inside the trust domain (the
// forward addresses), for federated authorities.
func Public(svcs []Service) []Service {
	out := make([]Service, len(svcs))
	for i, s := range svcs {
		s.Forward = ""
		out[i] = s
	}
	return out
}

// Equal reports whether a and b hold the same services in the same order.
func Equal(a, b []Service) bool { return slices.Equal(a, b) }
