package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/sniname"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// PROXY protocol modes of a route (Route.ProxyProtocol).
const (
	ProxyProtocolNone = "none" // the inbound proxy sees the gateway as the source
	ProxyProtocolV2   = "v2"   // a PROXY v2 header with the original source precedes the ClientHello
)

// Defaults and bounds of the configuration.
const (
	DefaultMaxConnections     = 10000
	DefaultMaxPendingPerSrc   = 64
	DefaultClientHelloTimeout = 5 * time.Second
	MaxClientHelloTimeout     = time.Minute
	DefaultIdleTimeout        = 5 * time.Minute
	DefaultDrainTimeout       = 30 * time.Second
	DefaultDialTimeout        = 5 * time.Second
)

// Config is `ward gateway --config gateway.yaml`; see docs/gateway.md. It
// has no field for a key, a certificate or a Workload API socket on
// purpose: the gateway never terminates TLS.
type Config struct {
	// Listen is the one address other clusters connect to (host:port).
	Listen string `yaml:"listen"`
	// TrustDomain is this cluster's trust domain: a route for service S
	// answers the SNI name S.<trust_domain>.ward (package sniname).
	TrustDomain string `yaml:"trust_domain"`
	// AdminAddress serves /metrics, /healthz and /readyz (host:port or
	// unix:///path); empty disables it.
	AdminAddress string `yaml:"admin_address"`

	// MaxConnections bounds open connections (default 10000).
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource bounds one source's open connections (TCP
	// peer IP; IPv6 per /64): default a tenth of max_connections but at
	// least 64, at most max_connections.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxPendingPerSource bounds one source's connections whose
	// ClientHello has not been read yet (default 64, at most
	// max_connections_per_source).
	MaxPendingPerSource int `yaml:"max_pending_per_source"`
	// ClientHelloTimeout closes a connection that has not sent a complete
	// ClientHello this long after it was accepted (default 5s, at most 1m).
	ClientHelloTimeout yamlconf.Duration `yaml:"client_hello_timeout"`
	// MaxClientHello bounds the ClientHello message in bytes (default
	// 16384, 1024..32768).
	MaxClientHello int `yaml:"max_client_hello"`
	// IdleTimeout closes a forwarded connection when neither side sent a
	// byte this long (default 5m).
	IdleTimeout  yamlconf.Duration `yaml:"idle_timeout"`
	DrainTimeout yamlconf.Duration `yaml:"drain_timeout"`
	DialTimeout  yamlconf.Duration `yaml:"dial_timeout"`
	// AccessLog is "stderr" (default), "stdout", "off" or a file path
	// (appended to).
	AccessLog string `yaml:"access_log"`

	// Routes are the exported services: nothing else is routable.
	Routes []Route `yaml:"routes"`
	// CatalogSocket is the node agent's policy socket (unix:///path): the
	// routes are then this trust domain's exported services in the
	// services catalog the policy stream carries (`ward service export`),
	// replaced as it changes; routes must be empty. The socket gives the
	// gateway no key: it reads policy versions, nothing else.
	CatalogSocket string `yaml:"catalog_socket"`
	// CatalogProxyProtocol is the proxy_protocol of the catalog's routes
	// (none or v2, default none).
	CatalogProxyProtocol string `yaml:"catalog_proxy_protocol"`
}

// Route is one exported service and the inbound proxy listener its
// connections go to.
type Route struct {
	// Service is the exported service's name, one DNS label (e.g.
	// payments): its SNI name is <service>.<trust_domain>.ward.
	Service string `yaml:"service"`
	// Forward is the local inbound proxy listener: host:port or
	// unix:///path.
	Forward string `yaml:"forward"`
	// ProxyProtocol is none (default) or v2: a PROXY v2 header with the
	// original source address (and the gateway's connection id) precedes
	// the ClientHello; the inbound listener must set accept_proxy_v2.
	ProxyProtocol string `yaml:"proxy_protocol"`

	sni string
}

// SNI is the server name the route answers (after validation).
func (r *Route) SNI() string { return r.sni }

// LoadConfig reads and validates the file at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading gateway config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("gateway config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML strictly (unknown fields, such as a key file,
// are errors), applies defaults and validates.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yamlconf.DecodeStrict(b, &c, "docs/gateway.md"); err != nil {
		return nil, err
	}
	c.defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) defaults() {
	def := func(d *yamlconf.Duration, v time.Duration) {
		if *d == 0 {
			*d = yamlconf.Duration(v)
		}
	}
	def(&c.ClientHelloTimeout, DefaultClientHelloTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.DialTimeout, DefaultDialTimeout)
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerSource == 0 {
		c.MaxConnectionsPerSource = max(c.MaxConnections/10, min(c.MaxConnections, DefaultMaxPendingPerSrc), 1)
	}
	if c.MaxPendingPerSource == 0 {
		c.MaxPendingPerSource = max(1, min(DefaultMaxPendingPerSrc, c.MaxConnectionsPerSource))
	}
	if c.MaxClientHello == 0 {
		c.MaxClientHello = DefaultMaxClientHello
	}
	if c.AccessLog == "" {
		c.AccessLog = "stderr"
	}
	if c.CatalogProxyProtocol == "" {
		c.CatalogProxyProtocol = ProxyProtocolNone
	}
	for i := range c.Routes {
		if c.Routes[i].ProxyProtocol == "" {
			c.Routes[i].ProxyProtocol = ProxyProtocolNone
		}
	}
}

// Validate checks the configuration (and computes the routes' SNI names);
// every error names the field and what to do.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen %q: give the host:port other clusters connect to, e.g. 0.0.0.0:15443", c.Listen)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		bad("listen %q: port %q is not a number 0..65535", c.Listen, port)
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil || c.TrustDomain != td.Name() {
		bad("trust_domain %q: give this cluster's trust domain name, e.g. prod.example (routes answer <service>.<trust_domain>.ward)", c.TrustDomain)
	}
	if c.AdminAddress != "" {
		if err := checkAddr(c.AdminAddress); err != nil {
			bad("admin_address: %v", err)
		}
	}
	if c.MaxConnections < 1 {
		bad("max_connections %d must be at least 1", c.MaxConnections)
	}
	if c.MaxConnectionsPerSource < 1 || c.MaxConnectionsPerSource > c.MaxConnections {
		bad("max_connections_per_source %d must be between 1 and max_connections (%d): it keeps one host from taking every slot", c.MaxConnectionsPerSource, c.MaxConnections)
	}
	if c.MaxPendingPerSource < 1 || c.MaxPendingPerSource > c.MaxConnectionsPerSource {
		bad("max_pending_per_source %d must be between 1 and max_connections_per_source (%d)", c.MaxPendingPerSource, c.MaxConnectionsPerSource)
	}
	if h := time.Duration(c.ClientHelloTimeout); h > MaxClientHelloTimeout {
		bad("client_hello_timeout %s is longer than %s: a connection that has not sent its ClientHello holds a slot that long; use a few seconds", h, MaxClientHelloTimeout)
	}
	if c.MaxClientHello < MinMaxClientHello || c.MaxClientHello > MaxMaxClientHello {
		bad("max_client_hello %d must be between %d and %d bytes (real ClientHellos are 0.3 to 2 KiB)", c.MaxClientHello, MinMaxClientHello, MaxMaxClientHello)
	}
	for _, d := range []struct {
		name string
		v    yamlconf.Duration
	}{{"client_hello_timeout", c.ClientHelloTimeout}, {"idle_timeout", c.IdleTimeout}, {"drain_timeout", c.DrainTimeout}, {"dial_timeout", c.DialTimeout}} {
		if d.v <= 0 {
			bad("%s must be positive", d.name)
		}
	}
	switch {
	case c.CatalogSocket != "":
		if p, ok := strings.CutPrefix(c.CatalogSocket, "unix://"); !ok || !strings.HasPrefix(p, "/") {
			bad("catalog_socket %q: give the node agent's policy socket as unix:///path", c.CatalogSocket)
		}
		if len(c.Routes) > 0 {
			bad("routes and catalog_socket exclude each other: with catalog_socket the routes are the exported services of the catalog (ward service export)")
		}
		switch c.CatalogProxyProtocol {
		case ProxyProtocolNone, ProxyProtocolV2:
		default:
			bad("catalog_proxy_protocol %q: use none or v2", c.CatalogProxyProtocol)
		}
	case len(c.Routes) == 0:
		bad("no routes: add the services this cluster exports under routes (service, forward), or follow the services catalog with catalog_socket")
	}
	seen := map[string]bool{}
	for i := range c.Routes {
		r := &c.Routes[i]
		f := fmt.Sprintf("routes[%d] (%s)", i, r.Service)
		if seen[r.Service] {
			bad("%s: service %q is routed twice: one route per service", f, r.Service)
		}
		seen[r.Service] = true
		if err := sniname.CheckService(r.Service); err != nil {
			bad("%s.service: %v", f, err)
		} else if err == nil && td.Name() != "" {
			if r.sni, err = sniname.For(r.Service, td.Name()); err != nil {
				bad("%s: %v", f, err)
			}
		}
		if err := checkAddr(r.Forward); err != nil {
			bad("%s.forward: %v (the local inbound proxy listener)", f, err)
		}
		switch r.ProxyProtocol {
		case ProxyProtocolNone, ProxyProtocolV2:
		default:
			bad("%s.proxy_protocol %q: use none or v2", f, r.ProxyProtocol)
		}
	}
	return errors.Join(errs...)
}

// checkAddr accepts host:port or unix:///absolute/path.
func checkAddr(addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%q: a unix socket needs an absolute path (unix:///run/ward/in.sock)", addr)
		}
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q: give host:port or unix:///path", addr)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number 0..65535", addr, port)
	}
	return nil
}

// splitAddr turns a configured address into a network and address.
func splitAddr(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		return "unix", p
	}
	return "tcp", addr
}
