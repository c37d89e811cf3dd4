package posture

import (
	"time"

	"github.com/wardproject/ward/internal/shared/telemetry"
)

// State is what drift compares the declared rules with: the authority's
// records, the telemetry its nodes reported and, from `ward drift --scan`,
// scan results. The authority builds it (without importing governance);
// internal/governance/drift evaluates it.
type State struct {
	TrustDomain string    `json:"trust_domain"`
	Region      string    `json:"region,omitempty"`
	Now         time.Time `json:"now"`
	// AuthorityFIPS is the authority process's own FIPS 140-3 mode.
	AuthorityFIPS bool `json:"authority_fips"`
	// PolicyVersion is the current policy version (0: none applied).
	PolicyVersion uint64    `json:"policy_version"`
	Keys          []Key     `json:"keys"`
	Entries       []Entry   `json:"entries"`
	Services      []Service `json:"services"`
	Bundles       []Bundle  `json:"bundles"`
	// Nodes are the latest telemetry reports, by node.
	Nodes []telemetry.NodeReport `json:"nodes"`
	Scans []Scan                 `json:"scans,omitempty"`
}

// Key is a KMS key as drift sees it.
type Key struct {
	Name           string    `json:"name"`
	Classification string    `json:"classification"`
	LastRotated    time.Time `json:"last_rotated"`
	// Versions counts the versions not destroyed.
	Versions int `json:"versions"`
	// Disabled: no version can encrypt (not used, so not overdue).
	Disabled bool `json:"disabled,omitempty"`
}

// Entry is a registration entry as drift sees it.
type Entry struct {
	ID       string        `json:"id"`
	SPIFFEID string        `json:"spiffe_id"`
	TTL      time.Duration `json:"ttl"` // 0: the authority's default SVID TTL
	// EffectiveTTL is what the CA issues for it (TTL or the default).
	EffectiveTTL time.Duration `json:"effective_ttl"`
}

// Service is an inbound service known to the authority (from the
// listeners its nodes report and the services catalog).
type Service struct {
	Name string `json:"name"`
	// PolicyCovered: the current policy version lets some identity
	// connect to it (or names it).
	PolicyCovered bool `json:"policy_covered"`
	// Evidence says how coverage was decided.
	Evidence string `json:"evidence,omitempty"`
}

// Bundle is a federated trust domain's bundle as this authority holds it.
type Bundle struct {
	TrustDomain string    `json:"trust_domain"`
	LastRefresh time.Time `json:"last_refresh"` // zero: never fetched
	Error       string    `json:"error,omitempty"`
}

// Scan is what a scan of one endpoint found, in drift's terms.
type Scan struct {
	Target string `json:"target"`
	// Node and Listener name the listener telemetry reported, if known.
	Node     string `json:"node,omitempty"`
	Listener string `json:"listener,omitempty"`
	Service  string `json:"service,omitempty"`
	// Versions offered ("1.2", "1.3", ...; older ones too).
	Versions []string `json:"versions"`
	// Groups offered (crypto/tls names).
	Groups             []string `json:"groups"`
	ClientCertRequired bool     `json:"client_cert_required"`
	Error              string   `json:"error,omitempty"`
}
