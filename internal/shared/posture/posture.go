// Package posture is the declared security posture of a mesh (policy as
// code, docs/governance.md): per cluster or region, whether FIPS mode is
// required, the TLS floor and key-exchange groups, which services need
// mTLS, the longest SVID lifetime, key rotation per classification and
// what the mesh must cover. The authority stores it in versions
// (internal/authority/posturestore) and internal/governance/drift compares
// it with the authority's state and what runs. The findings and the state
// they are computed from are here too, so the authority can hold them
// without importing governance.
package posture

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// MaxFileBytes bounds a posture file.
const MaxFileBytes = 256 << 10

// Bounds of a posture file's lists.
const (
	maxClusters = 256
	maxList     = 1024
	maxName     = 253
)

const docs = "docs/governance.md"

// File is a posture file: defaults, and per cluster (trust domain) or
// region the rules that differ from them.
type File struct {
	// Defaults apply to every cluster, and to trust domains no cluster names.
	Defaults Rules `yaml:"defaults" json:"defaults"`
	// Clusters override the defaults field by field.
	Clusters []Cluster `yaml:"clusters" json:"clusters,omitempty"`
}

// Cluster is the posture of one cluster: one trust domain, optionally
// named by region.
type Cluster struct {
	Name        string `yaml:"name" json:"name"`
	TrustDomain string `yaml:"trust_domain" json:"trust_domain"`
	Region      string `yaml:"region" json:"region,omitempty"`
	Rules       `yaml:",inline" json:"rules"`
}

// Rules are the declared rules of one scope. Unset fields (nil, zero,
// empty) take the defaults' value.
type Rules struct {
	// FIPSRequired: every reporting process (authority, agents, proxies,
	// gateways) must run in FIPS 140-3 mode (GODEBUG=fips140=on).
	FIPSRequired *bool `yaml:"fips_required" json:"fips_required,omitempty"`
	TLS          TLS   `yaml:"tls" json:"tls"`
	// MTLSRequired names the services (inbound service names, or "*" for
	// all) whose every connection must be mutual TLS.
	MTLSRequired []string `yaml:"mtls_required" json:"mtls_required,omitempty"`
	// MaxSVIDTTL is the longest X509-SVID lifetime an entry may ask for.
	MaxSVIDTTL yamlconf.Duration `yaml:"max_svid_ttl" json:"max_svid_ttl,omitempty"`
	// Rotation per KMS classification.
	Rotation map[string]Rotation `yaml:"rotation" json:"rotation,omitempty"`
	// Mesh is what the mesh must cover.
	Mesh Mesh `yaml:"mesh" json:"mesh"`
	// BundleMaxAge: a federated trust domain's bundle not refreshed for
	// longer is stale (default 24h when federation is in use).
	BundleMaxAge yamlconf.Duration `yaml:"bundle_max_age" json:"bundle_max_age,omitempty"`
	// TelemetryMaxAge: a node whose last report is older is silent
	// (default 5m).
	TelemetryMaxAge yamlconf.Duration `yaml:"telemetry_max_age" json:"telemetry_max_age,omitempty"`
}

// TLS is the declared TLS floor.
type TLS struct {
	// MinVersion is "1.2" or "1.3".
	MinVersion string `yaml:"min_version" json:"min_version,omitempty"`
	// Groups are the key-exchange groups connections may negotiate
	// (crypto/tls names: X25519MLKEM768, X25519, CurveP256, ...).
	Groups []string `yaml:"groups" json:"groups,omitempty"`
}

// Rotation is the declared rotation of one classification's keys.
type Rotation struct {
	// Period: a key not rotated for longer is overdue.
	Period yamlconf.Duration `yaml:"period" json:"period,omitempty"`
	// KeptVersions: at most this many versions not destroyed (0 = any).
	KeptVersions int `yaml:"kept_versions" json:"kept_versions,omitempty"`
}

// Mesh is what must be covered by the mesh: each namespace (SPIFFE IDs
// spiffe://TD/ns/NAME/...) needs a registered workload served by a
// reporting proxy, each service a reporting inbound listener and a policy.
type Mesh struct {
	Namespaces []string `yaml:"namespaces" json:"namespaces,omitempty"`
	Services   []string `yaml:"services" json:"services,omitempty"`
}

// Parse reads a posture file strictly: unknown fields, bad values and
// contradictions are errors naming the field and the fix. classifications,
// when not nil, are the KMS classifications rotation may name.
func Parse(b []byte, classifications []string) (*File, error) {
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("posture file is %d bytes: at most %d (split nothing: one file declares the whole posture)", len(b), MaxFileBytes)
	}
	var f File
	if err := yamlconf.DecodeStrict(b, &f, docs); err != nil {
		return nil, fmt.Errorf("posture: %w", err)
	}
	if err := f.Validate(classifications); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate checks every field (see Parse).
func (f *File) Validate(classifications []string) error {
	if len(f.Clusters) > maxClusters {
		return fmt.Errorf("posture: clusters has %d entries: at most %d", len(f.Clusters), maxClusters)
	}
	if err := f.Defaults.validate("defaults", classifications); err != nil {
		return err
	}
	seen := map[string]int{}
	for i, c := range f.Clusters {
		at := fmt.Sprintf("clusters[%d]", i)
		if c.Name == "" {
			return fmt.Errorf("posture: %s.name is empty: name the cluster (e.g. prod-eu)", at)
		}
		if len(c.Name) > maxName {
			return fmt.Errorf("posture: %s.name is longer than %d bytes", at, maxName)
		}
		if c.TrustDomain == "" && c.Region == "" {
			return fmt.Errorf("posture: %s (%s) has neither trust_domain nor region: set the trust domain it applies to", at, c.Name)
		}
		if c.TrustDomain != "" {
			if err := checkTrustDomain(c.TrustDomain); err != nil {
				return fmt.Errorf("posture: %s.trust_domain: %v", at, err)
			}
		}
		if len(c.Region) > maxName {
			return fmt.Errorf("posture: %s.region is longer than %d bytes", at, maxName)
		}
		key := c.TrustDomain + "\x00" + c.Region
		if j, dup := seen[key]; dup {
			return fmt.Errorf("posture: %s (%s) and clusters[%d] (%s) both apply to trust domain %q region %q: merge them", at, c.Name, j, f.Clusters[j].Name, c.TrustDomain, c.Region)
		}
		seen[key] = i
		if err := c.Rules.validate(at, classifications); err != nil {
			return err
		}
	}
	return nil
}

func checkTrustDomain(td string) error {
	if len(td) > 255 {
		return fmt.Errorf("%q is longer than 255 bytes", td)
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("%q: a trust domain has lowercase letters, digits, '.', '-' and '_' only (e.g. prod.example.org)", td)
		}
	}
	return nil
}

func (r *Rules) validate(at string, classifications []string) error {
	if v := r.TLS.MinVersion; v != "" && v != "1.2" && v != "1.3" {
		return fmt.Errorf("posture: %s.tls.min_version is %q: use \"1.2\" or \"1.3\" (ward never speaks older versions)", at, v)
	}
	if len(r.TLS.Groups) > 16 {
		return fmt.Errorf("posture: %s.tls.groups has %d entries: at most 16", at, len(r.TLS.Groups))
	}
	for i, g := range r.TLS.Groups {
		c, ok := CanonicalGroup(g)
		if !ok {
			return fmt.Errorf("posture: %s.tls.groups[%d] is %q: use one of %s", at, i, g, strings.Join(groupNames(), ", "))
		}
		r.TLS.Groups[i] = c
	}
	if err := checkNames(at+".mtls_required", r.MTLSRequired, true); err != nil {
		return err
	}
	if d := time.Duration(r.MaxSVIDTTL); d != 0 && d < time.Minute {
		return fmt.Errorf("posture: %s.max_svid_ttl is %v: use at least 1m (e.g. 1h)", at, d)
	}
	if len(r.Rotation) > maxList {
		return fmt.Errorf("posture: %s.rotation has %d classifications: at most %d", at, len(r.Rotation), maxList)
	}
	for _, class := range sortedKeys(r.Rotation) {
		rot := r.Rotation[class]
		if classifications != nil && !slices.Contains(classifications, class) {
			return fmt.Errorf("posture: %s.rotation.%s: %q is no KMS classification of this authority (%s): use one of them", at, class, class, strings.Join(classifications, ", "))
		}
		if d := time.Duration(rot.Period); d != 0 && d < time.Hour {
			return fmt.Errorf("posture: %s.rotation.%s.period is %v: use at least 1h (e.g. 30d)", at, class, d)
		}
		if rot.KeptVersions < 0 || rot.KeptVersions > 10000 {
			return fmt.Errorf("posture: %s.rotation.%s.kept_versions is %d: use 1 to 10000 (0 means any number)", at, class, rot.KeptVersions)
		}
		if rot.Period == 0 && rot.KeptVersions == 0 {
			return fmt.Errorf("posture: %s.rotation.%s declares nothing: set period and/or kept_versions", at, class)
		}
	}
	if err := checkNames(at+".mesh.namespaces", r.Mesh.Namespaces, false); err != nil {
		return err
	}
	if err := checkNames(at+".mesh.services", r.Mesh.Services, false); err != nil {
		return err
	}
	if d := time.Duration(r.BundleMaxAge); d != 0 && d < time.Minute {
		return fmt.Errorf("posture: %s.bundle_max_age is %v: use at least 1m", at, d)
	}
	if d := time.Duration(r.TelemetryMaxAge); d != 0 && d < 10*time.Second {
		return fmt.Errorf("posture: %s.telemetry_max_age is %v: use at least 10s", at, d)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func checkNames(at string, names []string, star bool) error {
	if len(names) > maxList {
		return fmt.Errorf("posture: %s has %d entries: at most %d", at, len(names), maxList)
	}
	seen := map[string]bool{}
	for i, n := range names {
		switch {
		case n == "":
			return fmt.Errorf("posture: %s[%d] is empty: name a service or namespace", at, i)
		case len(n) > maxName:
			return fmt.Errorf("posture: %s[%d] is longer than %d bytes", at, i, maxName)
		case n == "*" && !star:
			return fmt.Errorf("posture: %s[%d] is \"*\": list the names one by one", at, i)
		case strings.ContainsAny(n, " \t\n/\""):
			return fmt.Errorf("posture: %s[%d] is %q: a name has no spaces, quotes or '/'", at, i, n)
		case seen[n]:
			return fmt.Errorf("posture: %s lists %q twice: remove one", at, n)
		}
		seen[n] = true
	}
	return nil
}

// groups are the key-exchange groups by crypto/tls name, with aliases.
var groups = map[string]tls.CurveID{
	"X25519MLKEM768": tls.X25519MLKEM768, "SecP256r1MLKEM768": tls.SecP256r1MLKEM768, "SecP384r1MLKEM1024": tls.SecP384r1MLKEM1024,
	"X25519": tls.X25519, "CurveP256": tls.CurveP256, "CurveP384": tls.CurveP384, "CurveP521": tls.CurveP521,
}

var groupAliases = map[string]string{"P-256": "CurveP256", "P-384": "CurveP384", "P-521": "CurveP521",
	"secp256r1": "CurveP256", "secp384r1": "CurveP384", "secp521r1": "CurveP521", "x25519": "X25519"}

func groupNames() []string { return sortedKeys(groups) }

// CanonicalGroup returns the crypto/tls name of a group (tls.CurveID's
// String), accepting the aliases P-256, secp256r1, ...
func CanonicalGroup(name string) (string, bool) {
	if a, ok := groupAliases[name]; ok {
		name = a
	}
	_, ok := groups[name]
	return name, ok
}

// For returns the rules that apply to trust domain td (and region, if the
// authority has one): the first cluster naming both, else the one naming
// the trust domain, else the one naming the region, merged over the
// defaults; and the scope's name ("defaults" when no cluster applies).
func (f *File) For(td, region string) (Rules, string) {
	pick := -1
	for _, want := range []func(Cluster) bool{
		func(c Cluster) bool { return c.TrustDomain == td && c.Region == region && region != "" },
		func(c Cluster) bool { return c.TrustDomain == td && c.Region == "" },
		func(c Cluster) bool { return c.TrustDomain == td },
		func(c Cluster) bool { return c.TrustDomain == "" && region != "" && c.Region == region },
	} {
		for i, c := range f.Clusters {
			if want(c) {
				pick = i
				break
			}
		}
		if pick >= 0 {
			break
		}
	}
	if pick < 0 {
		return f.Defaults.clone(), "defaults"
	}
	return merge(f.Defaults, f.Clusters[pick].Rules), f.Clusters[pick].Name
}

func (r Rules) clone() Rules {
	r.TLS.Groups = slices.Clone(r.TLS.Groups)
	r.MTLSRequired = slices.Clone(r.MTLSRequired)
	r.Mesh.Namespaces = slices.Clone(r.Mesh.Namespaces)
	r.Mesh.Services = slices.Clone(r.Mesh.Services)
	rot := make(map[string]Rotation, len(r.Rotation))
	for k, v := range r.Rotation {
		rot[k] = v
	}
	r.Rotation = rot
	return r
}

func merge(d, o Rules) Rules {
	out := d.clone()
	if o.FIPSRequired != nil {
		v := *o.FIPSRequired
		out.FIPSRequired = &v
	}
	if o.TLS.MinVersion != "" {
		out.TLS.MinVersion = o.TLS.MinVersion
	}
	if o.TLS.Groups != nil {
		out.TLS.Groups = slices.Clone(o.TLS.Groups)
	}
	if o.MTLSRequired != nil {
		out.MTLSRequired = slices.Clone(o.MTLSRequired)
	}
	if o.MaxSVIDTTL != 0 {
		out.MaxSVIDTTL = o.MaxSVIDTTL
	}
	for k, v := range o.Rotation {
		out.Rotation[k] = v
	}
	if o.Mesh.Namespaces != nil {
		out.Mesh.Namespaces = slices.Clone(o.Mesh.Namespaces)
	}
	if o.Mesh.Services != nil {
		out.Mesh.Services = slices.Clone(o.Mesh.Services)
	}
	if o.BundleMaxAge != 0 {
		out.BundleMaxAge = o.BundleMaxAge
	}
	if o.TelemetryMaxAge != 0 {
		out.TelemetryMaxAge = o.TelemetryMaxAge
	}
	return out
}

// FIPS reports whether FIPS mode is required.
func (r Rules) FIPS() bool { return r.FIPSRequired != nil && *r.FIPSRequired }

// RequiresMTLS reports whether service must use mTLS.
func (r Rules) RequiresMTLS(service string) bool {
	return slices.Contains(r.MTLSRequired, "*") || slices.Contains(r.MTLSRequired, service)
}
