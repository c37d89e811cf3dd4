package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Identity configures workload identity: the CA, node attestation and the
// Node API that agents reach over mTLS. Zero values take the defaults
// documented per field (docs/identity.md).
type Identity struct {
	// KeyType of CA keys: ec-p256 (default) or ec-p384.
	KeyType string `yaml:"key_type"`
	// SVIDTTL is the default X509-SVID lifetime (default 1h).
	SVIDTTL yamlconf.Duration `yaml:"svid_ttl"`
	// MaxSVIDTTL caps entry TTLs (default 24h).
	MaxSVIDTTL yamlconf.Duration `yaml:"max_svid_ttl"`
	// JWTSVIDTTL is the default JWT-SVID lifetime (default 5m).
	JWTSVIDTTL yamlconf.Duration `yaml:"jwt_svid_ttl"`
	// AgentSVIDTTL is the agent SVID lifetime (default 1h).
	AgentSVIDTTL yamlconf.Duration `yaml:"agent_svid_ttl"`
	// IntermediateTTL is the lifetime of each intermediate CA (default 7d).
	IntermediateTTL yamlconf.Duration `yaml:"intermediate_ttl"`
	// RootTTL is the lifetime of each root (default 10 years).
	RootTTL yamlconf.Duration `yaml:"root_ttl"`
	// RefreshHint is published in the bundle (default 5m).
	RefreshHint yamlconf.Duration `yaml:"refresh_hint"`
	// NodeAPIAddress is host:port of the Node API; empty = off.
	NodeAPIAddress string `yaml:"node_api_address"`
	// NodeAPIDNSNames are extra DNS SANs of the Node API certificate.
	NodeAPIDNSNames []string `yaml:"node_api_dns_names"`
	// JoinTokenMaxTTL bounds `ward token create --ttl` (default 24h).
	JoinTokenMaxTTL yamlconf.Duration `yaml:"join_token_max_ttl"`
	// X509PopCABundle is a PEM file of CA certificates that node
	// certificates must chain to for x509pop; empty = x509pop off.
	X509PopCABundle string `yaml:"x509pop_ca_bundle"`
	// K8sPSAT lists the Kubernetes clusters whose agents attest with
	// projected service-account tokens (k8s_psat); empty = off.
	K8sPSAT []K8sPSATCluster `yaml:"k8s_psat"`

	// What is recorded and displaced per agent (docs/identity.md, What is
	// recorded per agent); unset = the default, an explicit 0 is refused.
	// MaxSVIDsPerEntry: unexpired X509-SVIDs per entry before the oldest
	// is displaced (default 8).
	MaxSVIDsPerEntry *int `yaml:"max_svids_per_entry"`
	// MaxDisplacedPerEntry: displaced X509-SVIDs of one entry on the
	// deny-list at once (default 16).
	MaxDisplacedPerEntry *int `yaml:"max_displaced_per_entry"`
	// MaxDisplacementsPerAgentHour: displacements (each a policy
	// version) per agent per hour (default 32).
	MaxDisplacementsPerAgentHour *int `yaml:"max_displacements_per_agent_hour"`
	// MaxJWTSVIDsPerEntry: unexpired JWT-SVIDs minted per entry (default
	// 64).
	MaxJWTSVIDsPerEntry *int `yaml:"max_jwt_svids_per_entry"`
	// MaxJWTSVIDsPerAgent: unexpired JWT-SVIDs minted through one agent,
	// all its entries together (default 1024): bounds the jtis one
	// eviction puts on the deny-list.
	MaxJWTSVIDsPerAgent *int `yaml:"max_jwt_svids_per_agent"`
}

// IssueLimit is one of the per-agent bounds of identity: its YAML name,
// value (nil: unset), default and accepted range.
type IssueLimit struct {
	Name     string
	V        *int
	Def      int
	Min, Max int
}

// IssueLimits lists the per-agent bounds with their defaults and ranges.
// The ranges: an agent rotating holds 2-3 SVIDs per entry (so at least
// 3), one audience set holds 2 JWT-SVIDs; 8192 JWT-SVIDs per agent are
// about 290 KB of deny-list when it is evicted, under a third of the
// federation revocation channel's 1 MiB; above the maxima the per-entry
// record, rewritten on each signing, or the deny-list and the policy
// versions an agent can cause grow past what is sensible.
func (i Identity) IssueLimits() []IssueLimit {
	return []IssueLimit{
		{"max_svids_per_entry", i.MaxSVIDsPerEntry, 8, 3, 256},
		{"max_displaced_per_entry", i.MaxDisplacedPerEntry, 16, 1, 1024},
		{"max_displacements_per_agent_hour", i.MaxDisplacementsPerAgentHour, 32, 1, 3600},
		{"max_jwt_svids_per_entry", i.MaxJWTSVIDsPerEntry, 64, 2, 4096},
		{"max_jwt_svids_per_agent", i.MaxJWTSVIDsPerAgent, 1024, 2, 8192},
	}
}

// Value is the limit's value, its default when unset.
func (l IssueLimit) Value() int {
	if l.V == nil {
		return l.Def
	}
	return *l.V
}

// K8sPSATCluster is one cluster for k8s_psat node attestation: where its
// apiserver is and the authority's own credentials for its TokenReview API.
type K8sPSATCluster struct {
	// Cluster names the cluster in agent IDs and selectors; agents name it
	// in their k8s_psat.cluster.
	Cluster string `yaml:"cluster"`
	// APIServer is the apiserver's https URL; empty = the cluster the
	// authority runs in ($KUBERNETES_SERVICE_HOST).
	APIServer string `yaml:"apiserver"`
	// CABundle verifies the apiserver (PEM); empty = the pod's
	// service-account CA.
	CABundle string `yaml:"ca_bundle"`
	// TokenFile holds the authority's bearer token for TokenReview (the
	// service account needs system:auth-delegator); empty = the pod's
	// service-account token.
	TokenFile string `yaml:"token_file"`
	// Audience the agents' tokens must be issued for (default
	// ward:<trust domain>: a token projected for another trust domain's
	// authority is refused here).
	Audience string `yaml:"audience"`
	// AllowedServiceAccounts are "namespace:name" of the service accounts
	// agents run as (e.g. ward-system:ward-agent). Required.
	AllowedServiceAccounts []string `yaml:"allowed_service_accounts"`
}

// Effective returns i with defaults filled in.
func (i Identity) Effective() Identity {
	def := func(d *yamlconf.Duration, v time.Duration) {
		if *d == 0 {
			*d = yamlconf.Duration(v)
		}
	}
	if i.KeyType == "" {
		i.KeyType = "ec-p256"
	}
	def(&i.SVIDTTL, time.Hour)
	def(&i.MaxSVIDTTL, max(24*time.Hour, time.Duration(i.SVIDTTL)))
	def(&i.JWTSVIDTTL, 5*time.Minute)
	def(&i.AgentSVIDTTL, time.Hour)
	def(&i.IntermediateTTL, 7*24*time.Hour)
	def(&i.RootTTL, 10*365*24*time.Hour)
	def(&i.RefreshHint, 5*time.Minute)
	def(&i.JoinTokenMaxTTL, 24*time.Hour)
	return i
}

func (i *Identity) defaults(c *Server) { *i = i.Effective() }

func (i *Identity) validate() error {
	e := i.Effective()
	switch e.KeyType {
	case "ec-p256", "ec-p384":
	default:
		return fmt.Errorf("identity.key_type %q is unknown: use ec-p256 or ec-p384", e.KeyType)
	}
	type bound struct {
		name     string
		v        yamlconf.Duration
		min, max time.Duration
	}
	for _, b := range []bound{
		{"svid_ttl", e.SVIDTTL, time.Minute, 30 * 24 * time.Hour},
		{"max_svid_ttl", e.MaxSVIDTTL, time.Minute, 30 * 24 * time.Hour},
		{"jwt_svid_ttl", e.JWTSVIDTTL, 10 * time.Second, 24 * time.Hour},
		{"agent_svid_ttl", e.AgentSVIDTTL, time.Minute, 30 * 24 * time.Hour},
		{"refresh_hint", e.RefreshHint, time.Second, 7 * 24 * time.Hour},
		{"join_token_max_ttl", e.JoinTokenMaxTTL, time.Second, 30 * 24 * time.Hour},
	} {
		if d := time.Duration(b.v); d < b.min || d > b.max {
			return fmt.Errorf("identity.%s %s is out of range: use between %s and %s", b.name, d, b.min, b.max)
		}
	}
	switch {
	case e.MaxSVIDTTL < e.SVIDTTL:
		return fmt.Errorf("identity.max_svid_ttl %s is below svid_ttl %s: raise max_svid_ttl", time.Duration(e.MaxSVIDTTL), time.Duration(e.SVIDTTL))
	case e.AgentSVIDTTL > e.MaxSVIDTTL:
		return fmt.Errorf("identity.agent_svid_ttl %s is above max_svid_ttl %s: lower it or raise max_svid_ttl", time.Duration(e.AgentSVIDTTL), time.Duration(e.MaxSVIDTTL))
	case e.IntermediateTTL < 2*e.MaxSVIDTTL:
		return fmt.Errorf("identity.intermediate_ttl %s must be at least twice max_svid_ttl %s", time.Duration(e.IntermediateTTL), time.Duration(e.MaxSVIDTTL))
	case e.RootTTL < 2*e.IntermediateTTL:
		return fmt.Errorf("identity.root_ttl %s must be at least twice intermediate_ttl %s", time.Duration(e.RootTTL), time.Duration(e.IntermediateTTL))
	case 6*e.RefreshHint*3 > e.IntermediateTTL:
		return fmt.Errorf("identity.refresh_hint %s is too long for intermediate_ttl %s: keys are prepared 6 refresh hints ahead, which must stay under a third of intermediate_ttl", time.Duration(e.RefreshHint), time.Duration(e.IntermediateTTL))
	}
	for _, l := range e.IssueLimits() {
		if v := l.Value(); v < l.Min || v > l.Max {
			return fmt.Errorf("identity.%s %d is out of range: use between %d and %d (default %d; leave it out for the default)", l.Name, v, l.Min, l.Max, l.Def)
		}
	}
	if a := e.NodeAPIAddress; a != "" {
		if err := ValidateListenAddress("identity.node_api_address", a); err != nil {
			return fmt.Errorf("%v (empty turns the Node API off)", err)
		}
	}
	for _, n := range e.NodeAPIDNSNames {
		if !validHostname(n) {
			return fmt.Errorf("identity.node_api_dns_names: %q is not a DNS name (letters, digits, '-' and '.', optional leading '*.')", n)
		}
	}
	if e.X509PopCABundle != "" {
		if _, err := LoadCertPool(e.X509PopCABundle); err != nil {
			return fmt.Errorf("identity.x509pop_ca_bundle: %v", err)
		}
	}
	seen := map[string]bool{}
	for i, c := range e.K8sPSAT {
		if err := c.validate(); err != nil {
			return fmt.Errorf("identity.k8s_psat[%d]: %v", i, err)
		}
		if seen[c.Cluster] {
			return fmt.Errorf("identity.k8s_psat[%d]: cluster %q is listed twice", i, c.Cluster)
		}
		seen[c.Cluster] = true
	}
	return nil
}

func (c K8sPSATCluster) validate() error {
	if !dnsLabel(c.Cluster) {
		return fmt.Errorf("cluster %q: give a name of 1-63 lowercase letters, digits and '-' (it becomes part of agent IDs)", c.Cluster)
	}
	if c.APIServer != "" && !strings.HasPrefix(c.APIServer, "https://") {
		return fmt.Errorf("apiserver %q: use an https:// URL (empty = the cluster the authority runs in)", c.APIServer)
	}
	if c.Audience != "" && (len(c.Audience) > 256 || strings.ContainsAny(c.Audience, " \t\r\n")) {
		return fmt.Errorf("audience %q: one word of at most 256 bytes (default ward:<trust domain>)", c.Audience)
	}
	if len(c.AllowedServiceAccounts) == 0 {
		return errors.New("allowed_service_accounts is required: the namespace:name of the agents' service account, e.g. ward-system:ward-agent")
	}
	for _, sa := range c.AllowedServiceAccounts {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || !dnsLabel(ns) || name == "" || len(name) > 253 || strings.Contains(name, ":") {
			return fmt.Errorf("allowed_service_accounts: %q is not namespace:name", sa)
		}
	}
	return nil
}

// dnsLabel: 1-63 lowercase letters, digits and '-', not at either end.
func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validHostname(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimPrefix(n, "*."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// LoadCertPool reads a PEM file of CA certificates.
func LoadCertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d does not parse: %v", path, n+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("%s: certificate %d (%s) is not a CA certificate", path, n+1, c.Subject)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New(path + " holds no PEM CERTIFICATE blocks: give the CA certificates node certificates chain to")
	}
	return pool, nil
}
