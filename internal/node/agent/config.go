package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// DefaultSyncInterval is how often the agent syncs with its authority when
// sync_interval is not set.
const DefaultSyncInterval = 5 * time.Second

// Config is the agent's configuration (`ward agent --config agent.yaml`).
type Config struct {
	// TrustDomain is the authority's trust domain, e.g. prod-eu.example.org.
	TrustDomain string `yaml:"trust_domain"`
	// ServerAddress is host:port of the authority's Node API, or several
	// authorities sharing one store separated by commas: the agent spreads
	// its calls over them and retries safe ones on another (docs/ha.md).
	ServerAddress string `yaml:"server_address"`
	// ServerSPIFFEID is the SPIFFE ID the authority's certificate must carry
	// (default spiffe://<trust_domain>/ward/server).
	ServerSPIFFEID string `yaml:"server_spiffe_id"`
	// TrustBundlePath is the bootstrap bundle (PEM certificates or SPIFFE
	// bundle JSON, as `ward ca bundle` writes it).
	TrustBundlePath string `yaml:"trust_bundle_path"`
	// JoinToken or JoinTokenFile: join-token node attestation.
	JoinToken     string `yaml:"join_token"`
	JoinTokenFile string `yaml:"join_token_file"`
	// X509Pop: node attestation by proof of possession of a node key.
	X509Pop *X509Pop `yaml:"x509pop"`
	// K8sPSAT: node attestation with the projected service-account token
	// of the agent's pod (docs/kubernetes.md).
	K8sPSAT *K8sPSAT `yaml:"k8s_psat"`
	// K8sWorkloadAttestor, when set, adds the k8s workload attestor: the
	// pod of each caller, from its cgroup and the apiserver.
	K8sWorkloadAttestor *K8sWorkloadAttestor `yaml:"k8s_workload_attestor"`
	// SocketPath is the Workload API unix socket.
	SocketPath string `yaml:"socket_path"`
	// PolicySocket serves the current policy version to local proxies
	// (PolicyDistribution.WatchPolicy); "none" turns it off. Default:
	// policy.sock next to socket_path.
	PolicySocket string `yaml:"policy_socket"`
	// PolicySocketAllowedUIDs and PolicySocketAllowedGIDs are local users
	// and (primary) groups that may read the policy socket without holding
	// a registration entry. Every other caller must attest, like a
	// Workload API caller, to at least one of this agent's entries.
	PolicySocketAllowedUIDs []uint32 `yaml:"policy_socket_allowed_uids"`
	PolicySocketAllowedGIDs []uint32 `yaml:"policy_socket_allowed_gids"`
	// DataDir holds the encrypted cache and its key.
	DataDir string `yaml:"data_dir"`
	// SyncInterval between syncs with the authority (default 5s).
	SyncInterval yamlconf.Duration `yaml:"sync_interval"`
	// TelemetryInterval between telemetry reports to the authority
	// (default 15s, 1s..1h; docs/governance.md): the agent's own summary
	// and what local proxies and gateways reported on the policy socket.
	TelemetryInterval yamlconf.Duration `yaml:"telemetry_interval"`
	// LogLevel: debug, info, warn or error (default info).
	LogLevel string `yaml:"log_level"`
	// HealthAddress, if set, serves /metrics and /status on this
	// host:port (plain HTTP; bind it to loopback).
	HealthAddress string `yaml:"health_address"`
	// Network, when set, turns on node-to-node encryption with WireGuard
	// (network.go, docs/network.md).
	Network *NetworkConfig `yaml:"network"`
}

// X509Pop configures x509pop node attestation.
type X509Pop struct {
	// CertPath: the node certificate chain (PEM, leaf first).
	CertPath string `yaml:"cert_path"`
	// KeyPath: the node's private key (PEM, PKCS#8, SEC 1 or PKCS#1).
	KeyPath string `yaml:"key_path"`
}

// K8sPSAT configures k8s_psat node attestation.
type K8sPSAT struct {
	// Cluster is the cluster's name in the authority's identity.k8s_psat.
	Cluster string `yaml:"cluster"`
	// TokenPath is the projected service-account token (audience
	// ward:<trust domain> unless the authority's identity.k8s_psat names
	// another),
	// re-read at every attestation (the kubelet refreshes it).
	TokenPath string `yaml:"token_path"`
}

// K8sWorkloadAttestor configures the k8s workload attestor.
type K8sWorkloadAttestor struct {
	// NodeName is this node's name (default $NODE_NAME at start, from the
	// downward API); only pods on it are watched.
	NodeName string `yaml:"node_name"`
	// APIServer, CAPath and TokenPath reach the apiserver (empty: the
	// cluster the agent runs in, with the pod's service-account token,
	// which needs get, list and watch on pods).
	APIServer string `yaml:"apiserver"`
	CAPath    string `yaml:"ca_path"`
	TokenPath string `yaml:"token_path"`
	// ProcRoot is where the host's /proc is (default /proc).
	ProcRoot string `yaml:"proc_root"`
}

// LoadConfig reads and validates the file at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML strictly (unknown fields are errors), applies
// defaults and validates. Relative paths stay relative to the working
// directory.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yamlconf.DecodeStrict(b, &c, "docs/agent.md"); err != nil {
		return nil, err
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = yamlconf.Duration(DefaultSyncInterval)
	}
	if c.TelemetryInterval == 0 {
		c.TelemetryInterval = yamlconf.Duration(DefaultTelemetryInterval)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.ServerSPIFFEID == "" && c.TrustDomain != "" {
		c.ServerSPIFFEID = "spiffe://" + c.TrustDomain + "/ward/server"
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the configuration as a whole.
func (c *Config) Validate() error {
	if c.TrustDomain == "" {
		return errors.New("trust_domain is required: the authority's trust domain, e.g. prod-eu.example.org")
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil || strings.Contains(c.TrustDomain, "://") {
		return fmt.Errorf("trust_domain %q is not a trust domain name: give the bare name, e.g. prod-eu.example.org", c.TrustDomain)
	}
	if c.ServerAddress == "" {
		return errors.New("server_address is required: host:port of the authority's Node API (identity.node_api_address in its config)")
	}
	for _, a := range strings.Split(c.ServerAddress, ",") {
		if h, p, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil || h == "" || p == "" {
			return fmt.Errorf("server_address %q: use host:port, e.g. ward.example.org:8443 (several authorities separated by commas)", c.ServerAddress)
		}
	}
	sid, err := spiffeid.FromString(c.ServerSPIFFEID)
	if err != nil {
		return fmt.Errorf("server_spiffe_id %q: %v", c.ServerSPIFFEID, err)
	}
	if !sid.MemberOf(td) {
		return fmt.Errorf("server_spiffe_id %s is outside trust domain %s", sid, td)
	}
	if c.TrustBundlePath == "" {
		return errors.New("trust_bundle_path is required: the authority's bundle (write it with `ward ca bundle > bundle.pem`)")
	}
	methods := 0
	if c.JoinToken != "" {
		methods++
	}
	if c.JoinTokenFile != "" {
		methods++
	}
	if c.JoinToken != "" && c.JoinTokenFile != "" {
		return errors.New("join_token and join_token_file exclude each other: set one")
	}
	if c.X509Pop != nil {
		if c.X509Pop.CertPath == "" || c.X509Pop.KeyPath == "" {
			return errors.New("x509pop needs both cert_path and key_path")
		}
		methods++
	}
	if c.K8sPSAT != nil {
		if c.K8sPSAT.Cluster == "" || c.K8sPSAT.TokenPath == "" {
			return errors.New("k8s_psat needs cluster (as named in the authority's identity.k8s_psat) and token_path (the projected token)")
		}
		methods++
	}
	if methods == 0 {
		return errors.New("no node attestation configured: set join_token (or join_token_file, from `ward token create`), x509pop {cert_path, key_path} or k8s_psat {cluster, token_path}")
	}
	if methods > 1 {
		return errors.New("configure one node attestation method, not both: a join token, x509pop or k8s_psat")
	}
	if k := c.K8sWorkloadAttestor; k != nil {
		if k.APIServer != "" && !strings.HasPrefix(k.APIServer, "https://") {
			return fmt.Errorf("k8s_workload_attestor.apiserver %q: use an https:// URL (empty = the cluster the agent runs in)", k.APIServer)
		}
	}
	if c.SocketPath == "" {
		return errors.New("socket_path is required: the Workload API unix socket, e.g. /run/ward/agent.sock")
	}
	if !filepath.IsAbs(c.SocketPath) {
		return fmt.Errorf("socket_path %q must be absolute: workloads find the socket by this path", c.SocketPath)
	}
	if c.PolicySocket == "" {
		c.PolicySocket = filepath.Join(filepath.Dir(c.SocketPath), "policy.sock")
	}
	if c.PolicySocket != "none" {
		if !filepath.IsAbs(c.PolicySocket) || len(c.PolicySocket) > 107 {
			return fmt.Errorf("policy_socket %q must be an absolute path of at most 107 bytes (or \"none\")", c.PolicySocket)
		}
		if c.PolicySocket == c.SocketPath {
			return errors.New("policy_socket and socket_path must differ")
		}
	} else if len(c.PolicySocketAllowedUIDs)+len(c.PolicySocketAllowedGIDs) > 0 {
		return errors.New("policy_socket_allowed_uids/gids are set but policy_socket is \"none\": remove them or enable the socket")
	}
	for _, l := range []struct {
		name string
		ids  []uint32
	}{{"policy_socket_allowed_uids", c.PolicySocketAllowedUIDs}, {"policy_socket_allowed_gids", c.PolicySocketAllowedGIDs}} {
		for _, id := range l.ids {
			if id == ^uint32(0) {
				return fmt.Errorf("%s: %d is not a valid id ((uid_t)-1 means \"no id\"); give numeric uids/gids of the proxies' users", l.name, id)
			}
		}
	}
	if len(c.SocketPath) > 107 {
		return fmt.Errorf("socket_path %q is longer than a unix socket path may be (107 bytes); choose a shorter one", c.SocketPath)
	}
	if c.DataDir == "" {
		return errors.New("data_dir is required: the directory for the encrypted SVID cache")
	}
	if d := time.Duration(c.SyncInterval); d < 100*time.Millisecond || d > time.Hour {
		return fmt.Errorf("sync_interval %s is out of range: use between 100ms and 1h (default 5s)", d)
	}
	if d := time.Duration(c.TelemetryInterval); d != 0 && (d < time.Second || d > time.Hour) {
		return fmt.Errorf("telemetry_interval %s is out of range: use between 1s and 1h (default 15s)", d)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q is unknown: use debug, info, warn or error", c.LogLevel)
	}
	if c.HealthAddress != "" {
		if _, p, err := net.SplitHostPort(c.HealthAddress); err != nil || p == "" {
			return fmt.Errorf("health_address %q: use host:port, e.g. 127.0.0.1:9091", c.HealthAddress)
		}
	}
	if c.Network != nil {
		if err := c.Network.validate(); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	return nil
}

// trustDomain returns the parsed trust domain of a validated config.
func (c *Config) trustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString(c.TrustDomain)
}

// serverID returns the parsed server SPIFFE ID of a validated config.
func (c *Config) serverID() spiffeid.ID { return spiffeid.RequireFromString(c.ServerSPIFFEID) }
