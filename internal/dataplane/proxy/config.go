package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/sniname"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Identity hand-off modes of an inbound listener (Inbound.PeerIdentity).
const (
	PeerIdentityNone       = "none"        // the app learns nothing
	PeerIdentityProxyV2    = "proxy-v2"    // PROXY protocol v2 header with TLVs (internal/shared/proxyproto)
	PeerIdentityHTTPHeader = "http-header" // HTTP/1.1 reverse proxy setting X-Ward-Peer-Id
)

// Defaults and bounds of the configuration.
const (
	DefaultMaxConnections   = 10000
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultDrainTimeout     = 30 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultPolicyPoll       = time.Second
	MaxPolicyPoll           = 10 * time.Second
	MinPolicyPoll           = 50 * time.Millisecond
)

// Per-source limits. max_connections_per_source defaults to a tenth of
// max_connections, but not below DefaultMaxHandshakesPerSource (nor above
// max_connections); max_handshakes_per_source to
// DefaultMaxHandshakesPerSource (at most max_connections_per_source).
const (
	DefaultMaxHandshakesPerSource = 64
	MaxHandshakeTimeout           = time.Minute
)

// Config is `ward proxy --config proxy.yaml`. See docs/proxy.md.
type Config struct {
	// WorkloadAPISocket is the node agent's Workload API: unix:///path or a
	// plain path.
	WorkloadAPISocket string `yaml:"workload_api_socket"`
	// SPIFFEID picks the proxy's X509-SVID when the Workload API offers
	// several (workloads sharing a uid); empty takes the first one.
	SPIFFEID string `yaml:"spiffe_id"`
	// SVIDHint picks the X509-SVID whose entry has this hint (`ward entry
	// create --hint`); with SPIFFEID both must match.
	SVIDHint string `yaml:"svid_hint"`
	// AdminAddress serves /metrics, /healthz and /readyz (host:port or
	// unix:///path); empty disables it.
	AdminAddress string `yaml:"admin_address"`
	// AllowNonLoopback permits listeners on addresses other than loopback.
	AllowNonLoopback bool `yaml:"allow_non_loopback"`
	// PolicySocket is the node agent's policy socket (unix:///path or a
	// plain path): the proxy follows the authority's policy versions
	// through it. Exclusive with PolicyFiles.
	PolicySocket string `yaml:"policy_socket"`
	// PolicyFiles are Cedar files or directories (every *.cedar inside),
	// for standalone proxies without an agent.
	PolicyFiles []string `yaml:"policy_files"`
	// DenyListFile is an optional JSON policy.DenyList (spiffe_ids, serials).
	DenyListFile string `yaml:"deny_list_file"`
	// PolicyPollInterval bounds how long a changed file goes unnoticed
	// (default 1s, 50ms..10s). SIGHUP reloads at once.
	PolicyPollInterval yamlconf.Duration `yaml:"policy_poll_interval"`

	// MaxConnections bounds open connections over all listeners.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource bounds the open connections of one source
	// (TCP peer IP; IPv6 per /64) on inbound TCP listeners (default: a
	// tenth of max_connections but at least 64, at most max_connections).
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxHandshakesPerSource bounds one source's inbound connections that
	// have not completed the TLS handshake, i.e. not presented and proved
	// a certificate (default 64, at most max_connections_per_source).
	MaxHandshakesPerSource int `yaml:"max_handshakes_per_source"`
	// HandshakeTimeout closes a connection whose TLS handshake has not
	// completed (default 5s, at most 1m).
	HandshakeTimeout yamlconf.Duration `yaml:"handshake_timeout"`
	IdleTimeout      yamlconf.Duration `yaml:"idle_timeout"`
	DrainTimeout     yamlconf.Duration `yaml:"drain_timeout"`
	DialTimeout      yamlconf.Duration `yaml:"dial_timeout"`

	TLS TLSConfig `yaml:"tls"`
	// AccessLog is "stderr" (default), "stdout", "off" or a file path
	// (appended to).
	AccessLog string `yaml:"access_log"`

	Inbound  []Inbound  `yaml:"inbound"`
	Outbound []Outbound `yaml:"outbound"`
}

// TLSConfig selects the protocol floor and session resumption.
type TLSConfig struct {
	// MinVersion is "1.3" (default) or "1.2" (then only ECDHE AEAD suites).
	MinVersion string `yaml:"min_version"`
	// SessionResumption resumes TLS 1.3 sessions (default true): a new
	// connection to or from a peer met within session_lifetime skips the
	// certificate signatures, never the verification (session.go).
	SessionResumption *bool `yaml:"session_resumption"`
	// SessionLifetime caps a session (default 10m, at most 1h); it never
	// outlives either side's SVID. Ticket keys rotate at this period.
	SessionLifetime yamlconf.Duration `yaml:"session_lifetime"`
	// SessionCacheSize bounds the sessions outbound listeners keep
	// (default 1024).
	SessionCacheSize int `yaml:"session_cache_size"`
}

// Resumption reports whether session resumption is on.
func (t TLSConfig) Resumption() bool { return t.SessionResumption == nil || *t.SessionResumption }

// Service is the policy resource an inbound listener protects.
type Service struct {
	Name           string `yaml:"name"`
	Port           int    `yaml:"port"`
	Classification string `yaml:"classification"`
}

// Inbound terminates mTLS and forwards authorized connections to the app.
type Inbound struct {
	Name    string  `yaml:"name"`
	Listen  string  `yaml:"listen"`  // host:port or unix:///path
	Forward string  `yaml:"forward"` // the app: host:port or unix:///path
	Service Service `yaml:"service"`
	// PeerIdentity: none (default), proxy-v2 or http-header.
	PeerIdentity string `yaml:"peer_identity"`
	// AcceptProxyV2: the listener is behind a ward gateway route with
	// proxy_protocol: v2, and every connection starts with a PROXY v2
	// header naming the original source (logged as client_addr, passed on
	// to the app); a connection without a valid one is refused. Only the
	// gateway may be able to reach such a listener (a unix socket or
	// loopback): whoever connects to it can claim any source address.
	// Such a listener counts the per-source limits under the original
	// source the header names (the gateway's own limits end with the
	// ClientHello); max_connections and handshake_timeout apply too.
	AcceptProxyV2 bool `yaml:"accept_proxy_v2"`
}

// Outbound accepts plaintext from the app and dials the remote with mTLS.
type Outbound struct {
	Name     string `yaml:"name"`
	Listen   string `yaml:"listen"`    // host:port (loopback) or unix:///path
	Remote   string `yaml:"remote"`    // host:port of the remote inbound listener
	ServerID string `yaml:"server_id"` // required SPIFFE ID of the remote
	// ServerName is sent as SNI (optional; defaults to none).
	ServerName string `yaml:"server_name"`
	// GatewayService reaches the service of that name through a ward
	// gateway (Remote is the gateway's address): the SNI is
	// <gateway_service>.<server_id's trust domain>.ward (sniname), the
	// name the gateway routes by. Exclusive with ServerName; the server
	// must still present ServerID.
	GatewayService string `yaml:"gateway_service"`
	// Service names an exported service instead of remote and server_id:
	// name@trust domain (e.g. payments@b.example). The proxy resolves it in
	// the services catalog of its policy stream (policy_socket): the
	// cluster's gateway is the remote, the SNI is the gateway's name of the
	// service and the server must present the SPIFFE ID the catalog names
	// (docs/gateway.md).
	Service string `yaml:"service"`
	// Failover lists further trust domains exporting the same service, in
	// order of preference: a new connection goes to the first cluster
	// that is not down (connect or handshake failed within failover_hold).
	Failover []string `yaml:"failover"`
	// FailoverHold is how long a cluster that failed is skipped before it
	// is tried again (default 2s); traffic returns to a preferred cluster
	// at most this long after it is back.
	FailoverHold yamlconf.Duration `yaml:"failover_hold"`

	ref       catalog.Ref
	failovers []string
	down      *downSet
}

// SNI is the server name the listener sends: ServerName, or the gateway
// SNI name of GatewayService in the trust domain of ServerID.
func (o *Outbound) SNI() (string, error) {
	if o.GatewayService == "" {
		return o.ServerName, nil
	}
	id, err := spiffeid.FromString(o.ServerID)
	if err != nil {
		return "", err
	}
	return sniname.For(o.GatewayService, id.TrustDomain().Name())
}

// LoadConfig reads and validates the file at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading proxy config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("proxy config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML strictly (unknown fields are errors), applies
// defaults and validates.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yamlconf.DecodeStrict(b, &c, "docs/proxy.md"); err != nil {
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
	def(&c.PolicyPollInterval, DefaultPolicyPoll)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.DialTimeout, DefaultDialTimeout)
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerSource == 0 {
		c.MaxConnectionsPerSource = max(c.MaxConnections/10, min(c.MaxConnections, DefaultMaxHandshakesPerSource), 1)
	}
	if c.MaxHandshakesPerSource == 0 {
		c.MaxHandshakesPerSource = max(1, min(DefaultMaxHandshakesPerSource, c.MaxConnectionsPerSource))
	}
	if c.TLS.MinVersion == "" {
		c.TLS.MinVersion = "1.3"
	}
	def(&c.TLS.SessionLifetime, DefaultSessionLifetime)
	if c.TLS.SessionCacheSize == 0 {
		c.TLS.SessionCacheSize = DefaultSessionCacheSize
	}
	if c.AccessLog == "" {
		c.AccessLog = "stderr"
	}
	for i := range c.Inbound {
		in := &c.Inbound[i]
		if in.PeerIdentity == "" {
			in.PeerIdentity = PeerIdentityNone
		}
		if in.Service.Name == "" {
			in.Service.Name = in.Name
		}
		if in.Service.Port == 0 {
			if _, p, err := net.SplitHostPort(in.Listen); err == nil {
				in.Service.Port, _ = strconv.Atoi(p)
			}
		}
	}
}

// Validate checks the configuration; every error names the field and what
// to do.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.WorkloadAPISocket == "" {
		bad("workload_api_socket is required: the node agent's Workload API socket, e.g. unix:///run/ward/agent.sock")
	}
	if c.SPIFFEID != "" {
		if _, err := spiffeid.FromString(c.SPIFFEID); err != nil {
			bad("spiffe_id %q: %v (the SPIFFE ID this proxy presents, e.g. spiffe://prod.example/ns/shop/api)", c.SPIFFEID, err)
		}
	}
	if len(c.Inbound)+len(c.Outbound) == 0 {
		bad("no listeners: add at least one entry under inbound or outbound")
	}
	if c.MaxConnections < 1 {
		bad("max_connections %d must be at least 1", c.MaxConnections)
	}
	if c.MaxConnectionsPerSource < 1 || c.MaxConnectionsPerSource > c.MaxConnections {
		bad("max_connections_per_source %d must be between 1 and max_connections (%d): it keeps one host from taking every slot; "+
			"behind a load balancer or NAT that hides callers' addresses raise it (up to max_connections)", c.MaxConnectionsPerSource, c.MaxConnections)
	}
	if c.MaxHandshakesPerSource < 1 || c.MaxHandshakesPerSource > c.MaxConnectionsPerSource {
		bad("max_handshakes_per_source %d must be between 1 and max_connections_per_source (%d)", c.MaxHandshakesPerSource, c.MaxConnectionsPerSource)
	}
	if h := time.Duration(c.HandshakeTimeout); h > MaxHandshakeTimeout {
		bad("handshake_timeout %s is longer than %s: connections that have not presented a certificate hold a slot that long; use a few seconds", h, MaxHandshakeTimeout)
	}
	if p := time.Duration(c.PolicyPollInterval); p < MinPolicyPoll || p > MaxPolicyPoll {
		bad("policy_poll_interval %s must be between %s and %s", p, MinPolicyPoll, MaxPolicyPoll)
	}
	for name, d := range map[string]yamlconf.Duration{"handshake_timeout": c.HandshakeTimeout, "idle_timeout": c.IdleTimeout,
		"drain_timeout": c.DrainTimeout, "dial_timeout": c.DialTimeout} {
		if d <= 0 {
			bad("%s must be positive", name)
		}
	}
	if c.TLS.MinVersion != "1.3" && c.TLS.MinVersion != "1.2" {
		bad("tls.min_version %q: use \"1.3\" (default) or \"1.2\"", c.TLS.MinVersion)
	}
	if l := time.Duration(c.TLS.SessionLifetime); l <= 0 || l > MaxSessionLifetime {
		bad("tls.session_lifetime %s must be positive and at most %s (a resumed session skips the certificate signatures; "+
			"its chain is still verified at every handshake)", l, MaxSessionLifetime)
	}
	if n := c.TLS.SessionCacheSize; n < 1 || n > MaxSessionCacheSize {
		bad("tls.session_cache_size %d must be between 1 and %d", n, MaxSessionCacheSize)
	}
	if c.PolicySocket != "" && len(c.PolicyFiles) > 0 {
		bad("policy_socket and policy_files exclude each other: follow the agent's policy, or read local files")
	}
	if len(c.Inbound) > 0 && len(c.PolicyFiles) == 0 && c.PolicySocket == "" {
		bad("inbound listeners need policy: set policy_socket (the agent's, e.g. /run/ward/policy.sock) or policy_files (Cedar files or directories); without policy every connection is denied")
	}
	if c.AdminAddress != "" {
		if err := c.checkListen("admin_address", c.AdminAddress); err != nil {
			errs = append(errs, err)
		}
	}
	names := map[string]bool{}
	listens := map[string]bool{}
	checkName := func(kind, name string) {
		switch {
		case name == "":
			bad("%s listener without a name: give each listener a unique name", kind)
		case names[name]:
			bad("%s listener name %q is used twice: names must be unique", kind, name)
		}
		names[name] = true
	}
	checkListen := func(field, addr string) {
		if listens[addr] {
			bad("%s %q: address used by two listeners", field, addr)
		}
		listens[addr] = true
		if err := c.checkListen(field, addr); err != nil {
			errs = append(errs, err)
		}
	}
	for i, in := range c.Inbound {
		f := fmt.Sprintf("inbound[%d] (%s)", i, in.Name)
		checkName("inbound", in.Name)
		checkListen(f+".listen", in.Listen)
		if err := checkDial(in.Forward); err != nil {
			bad("%s.forward: %v", f, err)
		}
		switch in.PeerIdentity {
		case PeerIdentityNone, PeerIdentityProxyV2, PeerIdentityHTTPHeader:
		default:
			bad("%s.peer_identity %q: use none, proxy-v2 or http-header", f, in.PeerIdentity)
		}
		if in.Service.Port < 0 || in.Service.Port > 65535 {
			bad("%s.service.port %d is out of range 0..65535", f, in.Service.Port)
		}
	}
	for i, out := range c.Outbound {
		f := fmt.Sprintf("outbound[%d] (%s)", i, out.Name)
		checkName("outbound", out.Name)
		checkListen(f+".listen", out.Listen)
		if out.Service != "" {
			if err := c.checkService(out); err != nil {
				bad("%s: %v", f, err)
			}
			continue
		}
		if len(out.Failover) > 0 || out.FailoverHold != 0 {
			bad("%s: failover and failover_hold go with service (name@trust domain)", f)
		}
		if _, _, err := net.SplitHostPort(out.Remote); err != nil {
			bad("%s.remote %q: give host:port of the remote ward proxy", f, out.Remote)
		}
		if _, err := spiffeid.FromString(out.ServerID); err != nil {
			bad("%s.server_id %q: %v (the SPIFFE ID the remote must present, e.g. spiffe://prod.example/ns/shop/api)", f, out.ServerID, err)
		} else if out.GatewayService != "" {
			if out.ServerName != "" {
				bad("%s: server_name and gateway_service exclude each other: gateway_service sets the SNI the gateway routes by", f)
			} else if _, err := out.SNI(); err != nil {
				bad("%s.gateway_service: %v", f, err)
			}
		}
	}
	return errors.Join(errs...)
}

// checkListen accepts unix:///path, or host:port on a loopback IP (or
// "localhost") unless AllowNonLoopback.
func (c *Config) checkListen(field, addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if p == "" || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%s %q: a unix socket needs an absolute path (unix:///run/app.sock)", field, addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: give host:port or unix:///path", field, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%s %q: port %q is not a number 0..65535", field, addr, port)
	}
	if c.AllowNonLoopback {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s %q is not a loopback address: listen on 127.0.0.1, [::1] or a unix socket, or set allow_non_loopback: true", field, addr)
	}
	return nil
}

func checkDial(addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%q: a unix socket needs an absolute path (unix:///run/app.sock)", addr)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q: give the app's host:port or unix:///path", addr)
	}
	return nil
}

// splitAddr turns a configured address into a network and address for
// net.Listen / net.Dial.
func splitAddr(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		return "unix", p
	}
	return "tcp", addr
}
