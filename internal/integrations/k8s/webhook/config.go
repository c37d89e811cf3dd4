// Package webhook is `ward webhook`: a Kubernetes validating admission
// webhook that enforces the encryption declarations of a small rules file.
// Namespaces carry a data-classification label; in a classified namespace
// pods run with a service account that maps to a ward identity and do not
// opt out of the proxy, and PersistentVolumeClaims use a StorageClass the
// file declares encrypted. Which rules a classification requires is listed
// per row of the KMS classification table (the authority's, when the
// webhook can reach it). It runs beside the apiserver's cluster, so it
// imports only shared, api and the public client.
//
// The AdmissionReview is decoded with small local structs (review.go), not
// k8s.io/api: that module brings k8s.io/apimachinery and its dependency
// tree into ward's go.mod for the handful of fields read here.
package webhook

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// The rules a classification can require (Config.Classifications).
const (
	// RuleClassified: every namespace carries the classification label with
	// a known classification. Always on (exempt namespaces aside).
	RuleClassified = "namespace-classification"
	// RuleIdentity: a pod's service account maps to a ward identity.
	RuleIdentity = "workload-identity"
	// RuleProxy: a pod does not opt out of ward's proxy.
	RuleProxy = "proxy"
	// RuleEncryptedStorage: a PVC names a StorageClass declared encrypted.
	RuleEncryptedStorage = "encrypted-storage"
)

var classRules = []string{RuleIdentity, RuleProxy, RuleEncryptedStorage}

// Defaults, documented in docs/kubernetes.md.
const (
	DefaultListen              = ":8443"
	DefaultClassificationLabel = "ward.dev/classification"
	DefaultProxyAnnotation     = "ward.dev/proxy"
	// MaxBody bounds an AdmissionReview: the apiserver keeps objects under
	// about 3 MiB, and a review of an update holds two of them.
	MaxBody = 8 << 20
)

// DefaultExemptNamespaces need no classification label.
var DefaultExemptNamespaces = []string{"kube-system", "kube-public", "kube-node-lease", "default"}

// Config is the webhook's YAML file.
type Config struct {
	// Listen is the HTTPS address (default :8443).
	Listen string `yaml:"listen"`
	// WorkloadAPISocket is the ward agent's Workload API socket; the
	// webhook serves its X509-SVID, issued by ward's CA, which must carry
	// DNSName as a DNS SAN (ward entry create ... --dns NAME).
	WorkloadAPISocket string `yaml:"workload_api_socket"`
	// DNSName is the webhook Service's name, e.g. ward-webhook.ward-system.svc.
	DNSName string `yaml:"dns_name"`
	// Mode: enforce (deny) or warn (admit with admission warnings).
	Mode string `yaml:"mode"`
	// Authority (optional) is the admin socket the classification table is
	// read from at start; then every row must be listed in Classifications.
	Authority AuthorityConfig `yaml:"authority"`
	// ClassificationLabel is the namespace label naming its classification.
	ClassificationLabel string `yaml:"classification_label"`
	// ProxyAnnotation on a pod set to "disabled" opts it out of the proxy.
	ProxyAnnotation string `yaml:"proxy_annotation"`
	// ExemptNamespaces need no label (default kube-system, kube-public,
	// kube-node-lease, default).
	ExemptNamespaces []string `yaml:"exempt_namespaces"`
	// Identities map service accounts to ward identities.
	Identities []Identity `yaml:"identities"`
	// EncryptedStorageClasses are the StorageClasses declared encrypted.
	EncryptedStorageClasses []string `yaml:"encrypted_storage_classes"`
	// Classifications: for each classification, the rules it requires
	// (workload-identity, proxy, encrypted-storage; [] for none).
	Classifications map[string][]string `yaml:"classifications"`
}

// AuthorityConfig names the authority's admin socket.
type AuthorityConfig struct {
	Address   string `yaml:"address"`
	ServerUID *int   `yaml:"server_uid"`
}

// Identity maps one service account to a ward SPIFFE ID.
type Identity struct {
	Namespace      string `yaml:"namespace"`
	ServiceAccount string `yaml:"service_account"`
	SPIFFEID       string `yaml:"spiffe_id"`
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
		return nil, fmt.Errorf("reading the webhook configuration: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *Config) validate() error {
	var problems []error
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.ClassificationLabel == "" {
		c.ClassificationLabel = DefaultClassificationLabel
	}
	if c.ProxyAnnotation == "" {
		c.ProxyAnnotation = DefaultProxyAnnotation
	}
	if c.ExemptNamespaces == nil {
		c.ExemptNamespaces = DefaultExemptNamespaces
	}
	switch c.Mode {
	case "":
		c.Mode = "enforce"
	case "enforce", "warn":
	default:
		problems = append(problems, fmt.Errorf("mode: %q: use enforce (deny) or warn (admit with a warning)", c.Mode))
	}
	if c.WorkloadAPISocket == "" {
		problems = append(problems, errors.New("workload_api_socket: required: the ward agent's Workload API socket (the webhook serves its SVID)"))
	}
	if c.DNSName == "" {
		problems = append(problems, errors.New("dns_name: required: the webhook Service's DNS name (<service>.<namespace>.svc), a DNS SAN of its SVID"))
	}
	if len(c.Classifications) == 0 {
		problems = append(problems, errors.New("classifications: required: for each classification the rules it requires, e.g. confidential: [workload-identity, proxy, encrypted-storage]"))
	}
	for name, rules := range c.Classifications {
		for _, r := range rules {
			if !slices.Contains(classRules, r) {
				problems = append(problems, fmt.Errorf("classifications.%s: unknown rule %q: use %s", name, r, strings.Join(classRules, ", ")))
			}
		}
	}
	seen := map[string]bool{}
	for i, id := range c.Identities {
		if id.Namespace == "" || id.ServiceAccount == "" {
			problems = append(problems, fmt.Errorf("identities[%d]: namespace and service_account are required", i))
		}
		if _, err := spiffeid.FromString(id.SPIFFEID); err != nil {
			problems = append(problems, fmt.Errorf("identities[%d]: spiffe_id %q: %v", i, id.SPIFFEID, err))
		}
		k := id.Namespace + "/" + id.ServiceAccount
		if seen[k] {
			problems = append(problems, fmt.Errorf("identities[%d]: %s is listed twice", i, k))
		}
		seen[k] = true
	}
	return errors.Join(problems...)
}

// CheckTable checks the file against the KMS classification table: every
// classification of the table has its rules listed, and the file names no
// classification the table lacks.
func (c *Config) CheckTable(table []string) error {
	var problems []error
	for _, n := range table {
		if _, ok := c.Classifications[n]; !ok {
			problems = append(problems, fmt.Errorf("classifications: %q (in the authority's classification table) has no rules: list it, with [] if it requires none", n))
		}
	}
	for n := range c.Classifications {
		if !slices.Contains(table, n) {
			problems = append(problems, fmt.Errorf("classifications: %q is not in the authority's classification table (%s)", n, strings.Join(table, ", ")))
		}
	}
	return errors.Join(problems...)
}

// classificationNames returns the file's classifications, sorted.
func (c *Config) classificationNames() []string {
	var n []string
	for k := range c.Classifications {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}
