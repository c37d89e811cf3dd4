// Package config reads and validates the authority's YAML configuration
// (`ward server --config ward.yaml`). Unknown fields, bad durations and
// inconsistent settings are errors that name the field and what to do;
// nothing starts on a config that does not validate.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Server is the authority's configuration.
type Server struct {
	TrustDomain string  `yaml:"trust_domain"`
	DataDir     string  `yaml:"data_dir"`
	AdminSocket string  `yaml:"admin_socket"`
	HTTPAddress string  `yaml:"http_address"`
	LogLevel    string  `yaml:"log_level"`
	Storage     Storage `yaml:"storage"`
	Seal        Seal    `yaml:"seal"`
	KMS         KMS     `yaml:"kms"`
	// Identity configures the CA, node attestation and the Node API
	// (identity.go).
	Identity Identity `yaml:"identity"`
	// Federation configures the bundle endpoint and declared federation
	// relationships (federation.go).
	Federation Federation `yaml:"federation"`
	// Services are the services this trust domain exports through its
	// gateways (services.go, docs/gateway.md).
	Services Services `yaml:"services"`
	// Anomaly configures the anomaly alerts on key access (anomaly.go,
	// docs/anomaly.md).
	Anomaly Anomaly `yaml:"anomaly"`
	// Dashboard configures the read-only web dashboard (dashboard.go,
	// docs/dashboard.md); off unless dashboard.address is set.
	Dashboard Dashboard `yaml:"dashboard"`
	// Network configures the WireGuard overlay (network.go,
	// docs/network.md).
	Network Network `yaml:"network"`
	// Policy configures the checks the authority runs on every policy set
	// it stores (policy.go, docs/policy.md).
	Policy Policy `yaml:"policy"`
}

// Storage selects the backend.
type Storage struct {
	Backend string `yaml:"backend"` // bbolt (default) or etcd
	Bbolt   Bbolt  `yaml:"bbolt"`
	Etcd    Etcd   `yaml:"etcd"`
}

// Bbolt configures the embedded store.
type Bbolt struct {
	Path string `yaml:"path"` // default <data_dir>/ward.db
}

// Etcd configures the distributed store.
type Etcd struct {
	Endpoints   []string          `yaml:"endpoints"`
	Prefix      string            `yaml:"prefix"`
	CAFile      string            `yaml:"ca_file"`
	CertFile    string            `yaml:"cert_file"`
	KeyFile     string            `yaml:"key_file"`
	DialTimeout yamlconf.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds each etcd request an API call makes (default
	// 5s, 100ms to 1m): an etcd that does not answer fails the call with
	// Unavailable instead of holding it (docs/ha.md).
	RequestTimeout yamlconf.Duration `yaml:"request_timeout"`
	// LeaseTTL is the lease of each authority's membership and of the
	// leader election (docs/ha.md): a dead leader is replaced within it.
	// Default 10s, at least 2s.
	LeaseTTL yamlconf.Duration `yaml:"lease_ttl"`
	// MemberName names this authority in `ward operator status` (default
	// host name and process id).
	MemberName string `yaml:"member_name"`
}

// Seal selects how the root key is protected.
type Seal struct {
	Type    string `yaml:"type"` // shamir (default), keyfile or pkcs11
	KeyFile string `yaml:"key_file"`
	// PKCS11 configures seal.type pkcs11 (pkcs11.go, docs/hsm.md).
	PKCS11 PKCS11 `yaml:"pkcs11"`
}

// KMS configures key management.
type KMS struct {
	RotationCheckInterval yamlconf.Duration         `yaml:"rotation_check_interval"`
	Classifications       map[string]Classification `yaml:"classifications"`
}

// Classification is one row of the operator's classification table.
type Classification struct {
	Algorithm      string            `yaml:"algorithm"`
	RotationPeriod yamlconf.Duration `yaml:"rotation_period"`
	KeepVersions   uint32            `yaml:"keep_versions"`
	// HardwareBacked keeps the keys in the PKCS#11 seal's HSM
	// (algorithm aes-256-gcm-hsm; docs/hsm.md).
	HardwareBacked bool `yaml:"hardware_backed"`
}

// Load reads, defaults and validates the file at path.
func Load(path string) (*Server, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (unknown fields are errors), applies
// defaults and validates.
func Parse(b []byte) (*Server, error) {
	var c Server
	if err := yamlconf.DecodeStrict(b, &c, "docs/configuration.md"); err != nil {
		return nil, err
	}
	c.defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Server) defaults() {
	if c.Storage.Backend == "" {
		c.Storage.Backend = "bbolt"
	}
	if c.DataDir != "" {
		if c.Storage.Bbolt.Path == "" {
			c.Storage.Bbolt.Path = filepath.Join(c.DataDir, "ward.db")
		}
		if c.AdminSocket == "" {
			c.AdminSocket = filepath.Join(c.DataDir, "admin.sock")
		}
	}
	if c.Seal.Type == "" {
		c.Seal.Type = "shamir"
	}
	if c.Storage.Etcd.Prefix == "" {
		c.Storage.Etcd.Prefix = "/ward/" + c.TrustDomain + "/"
	}
	if c.Storage.Etcd.DialTimeout == 0 {
		c.Storage.Etcd.DialTimeout = yamlconf.Duration(5 * time.Second)
	}
	if c.KMS.RotationCheckInterval == 0 {
		c.KMS.RotationCheckInterval = yamlconf.Duration(time.Minute)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	c.Identity.defaults(c)
	c.Dashboard.defaults(c.DataDir)
	c.Policy.defaults()
}

// Validate checks the configuration as a whole.
func (c *Server) Validate() error {
	if c.TrustDomain == "" {
		return errors.New("trust_domain is required (for example prod-eu.example.org)")
	}
	if err := ValidateTrustDomain(c.TrustDomain); err != nil {
		return fmt.Errorf("trust_domain: %v", err)
	}
	if c.DataDir == "" {
		return errors.New("data_dir is required: the directory for the admin socket and (with bbolt) the data file")
	}
	if err := absPath("data_dir", c.DataDir); err != nil {
		return err
	}
	if err := absPath("admin_socket", c.AdminSocket); err != nil {
		return err
	}
	if len(c.AdminSocket) > maxSocketPath {
		return fmt.Errorf("admin_socket %q is %d bytes long, over the %d a unix socket path may have: choose a shorter path (or a shorter data_dir)", c.AdminSocket, len(c.AdminSocket), maxSocketPath)
	}
	if c.HTTPAddress != "" {
		if err := ValidateListenAddress("http_address", c.HTTPAddress); err != nil {
			return err
		}
	}
	switch c.Storage.Backend {
	case "bbolt":
		if err := absPath("storage.bbolt.path", c.Storage.Bbolt.Path); err != nil {
			return err
		}
	case "etcd":
		if len(c.Storage.Etcd.Endpoints) == 0 {
			return errors.New("storage.etcd.endpoints is empty: list at least one etcd endpoint such as https://10.0.0.1:2379")
		}
		e := c.Storage.Etcd
		if (e.CertFile == "") != (e.KeyFile == "") {
			return errors.New("storage.etcd: cert_file and key_file go together: set both or neither")
		}
		if r := time.Duration(e.RequestTimeout); r != 0 && (r < 100*time.Millisecond || r > time.Minute) {
			return fmt.Errorf("storage.etcd.request_timeout %s is out of range: use 100ms to 1m (each etcd request of an API call is bounded by it; 5s is the default)", r)
		}
		if e.LeaseTTL != 0 && (time.Duration(e.LeaseTTL) < 2*time.Second || time.Duration(e.LeaseTTL) > 5*time.Minute) {
			return fmt.Errorf("storage.etcd.lease_ttl %s is out of range: use 2s to 5m (a dead leader is replaced within it; 10s is the default)", time.Duration(e.LeaseTTL))
		}
	default:
		return fmt.Errorf("storage.backend %q is unknown: use bbolt or etcd", c.Storage.Backend)
	}
	switch c.Seal.Type {
	case "shamir":
	case "keyfile":
		if c.Seal.KeyFile == "" {
			return errors.New("seal.key_file is required with seal.type keyfile (development only)")
		}
		if err := absPath("seal.key_file", c.Seal.KeyFile); err != nil {
			return err
		}
	case "pkcs11":
		if err := c.Seal.PKCS11.validate(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("seal.type %q is unknown: use shamir, keyfile or pkcs11", c.Seal.Type)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q is unknown: use debug, info, warn or error", c.LogLevel)
	}
	if time.Duration(c.KMS.RotationCheckInterval) < time.Second {
		return errors.New("kms.rotation_check_interval must be at least 1s")
	}
	table, err := c.ClassificationTable()
	if err != nil {
		return err
	}
	if err := c.Anomaly.validate(table.Names()); err != nil {
		return err
	}
	if err := c.Network.validate(); err != nil {
		return err
	}
	if err := c.Network.checkAddresses(map[string]string{"identity.node_api_address": c.Identity.NodeAPIAddress,
		"federation.bundle_endpoint.address": c.Federation.BundleEndpoint.Address, "federation.bundle_endpoint.web_address": c.Federation.BundleEndpoint.WebAddress}); err != nil {
		return err
	}
	if err := c.Dashboard.validate(); err != nil {
		return err
	}
	if err := c.Policy.validate(); err != nil {
		return err
	}
	if err := c.Identity.validate(); err != nil {
		return err
	}
	if err := c.Services.validate(c.TrustDomain); err != nil {
		return err
	}
	if err := c.Federation.validate(c.TrustDomain); err != nil {
		return err
	}
	return c.checkListenerClash()
}

// checkListenerClash refuses two listeners of this server on one port
// (the second would fail to bind only after data_dir was created and the
// first listener started).
func (c *Server) checkListenerClash() error {
	be := c.Federation.BundleEndpoint
	ls := []struct{ field, addr string }{
		{"http_address", c.HTTPAddress},
		{"identity.node_api_address", c.Identity.NodeAPIAddress},
		{"federation.bundle_endpoint.address", be.Address},
		{"federation.bundle_endpoint.web_address", be.WebAddress},
		{"dashboard.address", c.Dashboard.Address},
	}
	for i := range ls {
		for j := i + 1; j < len(ls); j++ {
			if ls[i].addr != "" && ls[j].addr != "" && samePort(ls[i].addr, ls[j].addr) {
				return fmt.Errorf("%s %s and %s %s use the same port: give them different ports", ls[i].field, ls[i].addr, ls[j].field, ls[j].addr)
			}
		}
	}
	return nil
}

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// absPath requires an absolute path: a relative one would depend on the
// directory the server happens to be started from. Empty is left to the
// field's own rule.
func absPath(field, p string) error {
	if p == "" || filepath.IsAbs(p) {
		return nil
	}
	return fmt.Errorf("%s %q is a relative path: give an absolute path such as /var/lib/ward (a relative one depends on the directory ward is started from)", field, p)
}

// ValidateListenAddress checks a host:port to listen on: the port is a
// number 0–65535 (0 picks a free port), the host is empty (all
// interfaces), an IP address or a DNS name.
func ValidateListenAddress(field, a string) error {
	hint := fmt.Sprintf("%s %q: use host:port, e.g. 127.0.0.1:9090, [::1]:9090 or :9090", field, a)
	if strings.Contains(a, "://") {
		return errors.New(hint + " (no scheme)")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%s: %v", hint, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || port != strconv.Itoa(n) {
		return fmt.Errorf("%s: the port must be a number from 0 to 65535", hint)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		return fmt.Errorf("%s: %q is neither an IP address nor a host name", hint, host)
	}
	return nil
}

// samePort reports whether two listen addresses would collide: the same
// non-zero port on the same host or where either is a wildcard.
func samePort(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}

// ClassificationTable returns the configured table, or the default one.
// A configured row replaces the default row of the same name.
func (c *Server) ClassificationTable() (kms.Table, error) {
	t := kms.DefaultTable()
	for name, row := range c.KMS.Classifications {
		alg, err := kmsfmt.ParseAlg(row.Algorithm)
		switch {
		case row.Algorithm == "" && row.HardwareBacked:
			alg, err = kmsfmt.AlgAES256GCMHSM, nil
		case row.Algorithm == "":
			alg, err = kmsfmt.AlgAES256GCMHKDF, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kms.classifications.%s.algorithm: %v", name, err)
		}
		if row.HardwareBacked != (alg == kmsfmt.AlgAES256GCMHSM) {
			return nil, fmt.Errorf("kms.classifications.%s: algorithm %s goes with hardware_backed: true, and hardware_backed rows use only it (leave algorithm empty)", name, kmsfmt.AlgAES256GCMHSM)
		}
		if row.RotationPeriod == 0 {
			return nil, fmt.Errorf("kms.classifications.%s.rotation_period is required (e.g. 90d)", name)
		}
		t[name] = kms.Classification{Name: name, Algorithm: alg, RotationPeriod: time.Duration(row.RotationPeriod), KeepVersions: row.KeepVersions, HardwareBacked: row.HardwareBacked}
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("kms.classifications: %v", err)
	}
	return t, nil
}

// ValidateTrustDomain checks a SPIFFE trust domain name with go-spiffe.
func ValidateTrustDomain(td string) error {
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		return fmt.Errorf("%q is not a valid SPIFFE trust domain (%v): use lowercase letters, digits, '.', '-' and '_', e.g. prod-eu.example.org", td, err)
	}
	if strings.Contains(td, "://") {
		return fmt.Errorf("%q: give the bare trust domain name, without spiffe://", td)
	}
	return nil
}
