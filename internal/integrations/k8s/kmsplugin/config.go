// Package kmsplugin is ward's Kubernetes KMS v2 plugin: it serves the KMS
// v2 gRPC API (k8s.io/kms apis/v2) to kube-apiserver on a unix socket and
// wraps the apiserver's DEK seeds with a named ward key through the
// authority, bound to an encryption context that names the cluster. It
// runs beside the apiserver (`ward kms-plugin`), so it imports only
// shared, api and the public client: never the authority's internals.
package kmsplugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// ContextKey is the encryption-context key every DEK seed is bound to; its
// value is the cluster name, so a seed wrapped for one cluster does not
// decrypt for another, nor for any other ward KMS caller.
const ContextKey = "k8s-kms-plugin"

// Defaults, documented in docs/kubernetes.md.
const (
	// DefaultHealthTTL is how long a successful Status round trip is
	// reused. The apiserver polls Status about once a minute while healthy
	// (every 10 s while not), so with 10 s every healthy poll after a quiet
	// spell makes one fresh round trip.
	DefaultHealthTTL = 10 * time.Second
	// DefaultTimeout bounds every call to the authority; the apiserver
	// gives a KMS v2 call 3 s in all.
	DefaultTimeout = 2 * time.Second
	// RetryAfterFailure is how long a failed Status round trip (or a call
	// of the apiserver's refused for every call) is reused: the next
	// Status after it asks the authority again, so a blip (one call lost)
	// clears within about a second instead of a health TTL, while an
	// authority that stays down is asked at most about once a second
	// (plus the round trip's own time: concurrent Status calls wait for
	// the one in flight), never once per apiserver poll. At most the
	// health TTL.
	RetryAfterFailure = time.Second
)

// Config is the plugin's YAML configuration file.
type Config struct {
	// Socket is the unix socket the apiserver dials (the endpoint of the
	// EncryptionConfiguration, without "unix://").
	Socket string `yaml:"socket"`
	// Cluster names the cluster; it is the value of the k8s-kms-plugin
	// encryption context, so it must never change for stored data.
	Cluster string `yaml:"cluster"`
	// Key is the ward key that wraps DEK seeds (ward key create NAME).
	Key string `yaml:"key"`
	// Authority says how to reach the authority.
	Authority AuthorityConfig `yaml:"authority"`
	// HealthTTL: how long a good Status round trip is reused (default 10s).
	HealthTTL yamlconf.Duration `yaml:"health_ttl"`
	// Timeout bounds each call to the authority (default 2s).
	Timeout yamlconf.Duration `yaml:"timeout"`
}

// AuthorityConfig says how the plugin reaches the authority, in one of two
// modes: the authority's admin socket on the same node (Address,
// ServerUID), or the workload KMS on the authority's Node API over mutual
// TLS with the plugin's own X509-SVID from the node's ward agent (NodeAPI,
// ServerID, WorkloadAPISocket).
type AuthorityConfig struct {
	// Address is unix:///path/to/admin.sock (default $WARD_ADDRESS), or the
	// admin sockets of several authorities sharing one store separated by
	// commas: calls fail over between them (docs/ha.md).
	Address string `yaml:"address"`
	// ServerUID also trusts an admin socket served by this uid (as the
	// CLI's --server-uid); -1 or absent: only root, the plugin's own uid or
	// the owner of a private directory holding the socket.
	ServerUID *int `yaml:"server_uid"`

	// NodeAPI (mTLS mode) is host:port of the authority's Node API
	// (identity.node_api_address), or those of several authorities sharing
	// one store separated by commas (calls fail over between them). The
	// plugin calls the workload KMS there as a workload: every call is
	// authorized by policy on the plugin's SPIFFE ID and audited under it.
	NodeAPI string `yaml:"node_api"`
	// ServerID (mTLS mode) is the only SPIFFE ID the plugin accepts from the
	// Node API: spiffe://<trust domain>/ward/server.
	ServerID string `yaml:"server_id"`
	// WorkloadAPISocket (mTLS mode) is the node's ward agent's Workload API
	// socket (an absolute path), where the plugin gets its X509-SVID and
	// the trust bundle, rotations included.
	WorkloadAPISocket string `yaml:"workload_api_socket"`
}

// AttemptTimeout bounds one attempt of a call when the authority section
// names several authorities: half the call's timeout, so a call that finds
// the first one silent (a partition drops its packets; a stopped one
// refuses at once) still has the time to fail over to the next one. The
// client's own default (10 s) is longer than the whole call.
func (c *Config) AttemptTimeout() time.Duration {
	t := time.Duration(c.Timeout)
	if t <= 0 {
		t = DefaultTimeout
	}
	return t / 2
}

// MTLS reports whether the plugin reaches the authority over the Node API
// (mutual TLS, the plugin's own SVID) rather than the admin socket.
func (a AuthorityConfig) MTLS() bool { return a.NodeAPI != "" }

// ServerSPIFFEID is ServerID parsed (mTLS mode; validated by ParseConfig).
func (a AuthorityConfig) ServerSPIFFEID() (spiffeid.ID, error) {
	return spiffeid.FromString(a.ServerID)
}

const configDocs = "docs/kubernetes.md"

// ParseConfig reads and validates a configuration, filling defaults.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yamlconf.DecodeStrict(b, &c, configDocs); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// LoadConfig reads the configuration file at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the kms-plugin configuration: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *Config) validate() error {
	var problems []error
	if c.Socket == "" {
		problems = append(problems, errors.New("socket: required, for example /run/ward/kms-plugin.sock (the EncryptionConfiguration's endpoint is unix:// followed by it)"))
	} else if !filepath.IsAbs(c.Socket) {
		problems = append(problems, fmt.Errorf("socket: %q must be an absolute path", c.Socket))
	}
	if c.Cluster == "" {
		problems = append(problems, errors.New("cluster: required: the cluster's name, bound into every wrapped DEK seed (never change it while data is stored under it)"))
	} else if len(c.Cluster) > 253 {
		problems = append(problems, fmt.Errorf("cluster: %d characters: the limit is 253", len(c.Cluster)))
	}
	if err := kmsfmt.ValidateKeyName(c.Key); err != nil {
		problems = append(problems, fmt.Errorf("key: %v", err))
	}
	problems = append(problems, c.Authority.validate()...)
	if c.HealthTTL == 0 {
		c.HealthTTL = yamlconf.Duration(DefaultHealthTTL)
	} else if c.HealthTTL < 0 || time.Duration(c.HealthTTL) > time.Minute {
		problems = append(problems, fmt.Errorf("health_ttl: %s: use 0s < health_ttl <= 1m (the apiserver polls Status every minute)", time.Duration(c.HealthTTL)))
	}
	if c.Timeout == 0 {
		c.Timeout = yamlconf.Duration(DefaultTimeout)
	} else if c.Timeout < 0 || time.Duration(c.Timeout) >= 3*time.Second {
		problems = append(problems, fmt.Errorf("timeout: %s: use 0s < timeout < 3s (the apiserver gives a KMS call 3s)", time.Duration(c.Timeout)))
	}
	return errors.Join(problems...)
}

// validate checks that exactly one mode is configured, and that mode's
// fields.
func (a AuthorityConfig) validate() []error {
	var problems []error
	if !a.MTLS() {
		var stray []string
		if a.ServerID != "" {
			stray = append(stray, "server_id")
		}
		if a.WorkloadAPISocket != "" {
			stray = append(stray, "workload_api_socket")
		}
		if len(stray) > 0 {
			problems = append(problems, fmt.Errorf("authority.%s: only for the mTLS mode: set authority.node_api (host:port of the Node API) too, or remove %s to use the admin socket (authority.address)",
				strings.Join(stray, ", authority."), strings.Join(stray, " and ")))
		}
		return problems
	}
	if a.Address != "" || a.ServerUID != nil {
		problems = append(problems, errors.New("authority: node_api (mTLS to the Node API) and address/server_uid (the admin socket) are both set: choose one mode (docs/kubernetes.md)"))
	}
	for _, addr := range strings.Split(a.NodeAPI, ",") {
		addr = strings.TrimSpace(addr)
		host, port, err := net.SplitHostPort(addr)
		switch {
		case strings.Contains(addr, "://"):
			problems = append(problems, fmt.Errorf("authority.node_api: %q: give host:port (the authority's identity.node_api_address), without a scheme", addr))
		case err != nil || host == "" || port == "":
			problems = append(problems, fmt.Errorf("authority.node_api: %q is not host:port (several authorities: separated by commas)", addr))
		}
	}
	if a.ServerID == "" {
		problems = append(problems, errors.New("authority.server_id: required with node_api: the SPIFFE ID the Node API must present, spiffe://<trust domain>/ward/server"))
	} else if id, err := spiffeid.FromString(a.ServerID); err != nil {
		problems = append(problems, fmt.Errorf("authority.server_id: %q is not a SPIFFE ID (%v): use spiffe://<trust domain>/ward/server", a.ServerID, err))
	} else if id.Path() == "" {
		problems = append(problems, fmt.Errorf("authority.server_id: %q names a whole trust domain: the Node API's SVID is spiffe://%s/ward/server", a.ServerID, id.TrustDomain().Name()))
	}
	switch {
	case a.WorkloadAPISocket == "":
		problems = append(problems, errors.New("authority.workload_api_socket: required with node_api: the ward agent's Workload API socket on this node, e.g. /run/ward/agent.sock (the plugin's X509-SVID comes from there)"))
	case strings.HasPrefix(a.WorkloadAPISocket, "unix:"):
		problems = append(problems, fmt.Errorf("authority.workload_api_socket: %q: give the socket's path, without unix://", a.WorkloadAPISocket))
	case !filepath.IsAbs(a.WorkloadAPISocket):
		problems = append(problems, fmt.Errorf("authority.workload_api_socket: %q must be an absolute path", a.WorkloadAPISocket))
	}
	return problems
}
