package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Federation configures SPIFFE Federation (docs/federation.md): the bundle
// endpoint that serves this trust domain's bundle, and relationships with
// foreign trust domains declared here rather than with `ward federation add`.
type Federation struct {
	BundleEndpoint BundleEndpoint `yaml:"bundle_endpoint"`
	// RefreshMin and RefreshMax bound a foreign bundle's refresh hint
	// (defaults 30s and 1h); failed fetches retry from RefreshMin.
	RefreshMin yamlconf.Duration `yaml:"refresh_min"`
	RefreshMax yamlconf.Duration `yaml:"refresh_max"`
	// StaleAfterHints: a foreign bundle not refreshed for this many refresh
	// hints raises a health warning and ward_federation_bundle_stale (default 3).
	StaleAfterHints int `yaml:"stale_after_hints"`
	// WitnessInterval is how often this authority witnesses the audit log
	// of every https_spiffe peer (fetch its signed checkpoint, prove
	// consistency, cosign; default 1m, at least 1s).
	WitnessInterval yamlconf.Duration `yaml:"witness_interval"`
	// WebRoots is a PEM file of CA certificates for https_web endpoints
	// (default: the system roots).
	WebRoots string `yaml:"web_roots"`
	// TrustDomains are the declared relationships.
	TrustDomains []FederatedDomain `yaml:"trust_domains"`
}

// BundleEndpoint is where this authority serves its bundle.
type BundleEndpoint struct {
	// Address (host:port) of the https_spiffe endpoint, authenticated by the
	// X509-SVID spiffe://<trust domain>/ward/server; empty = off.
	Address string `yaml:"address"`
	// WebAddress (host:port) of the https_web endpoint with a Web PKI
	// certificate (CertFile, KeyFile: PEM); empty = off.
	WebAddress string `yaml:"web_address"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
}

// FederatedDomain is one relationship declared in the config.
type FederatedDomain struct {
	TrustDomain string `yaml:"trust_domain"`
	// Endpoint is the https:// URL of its bundle endpoint.
	Endpoint string `yaml:"endpoint"`
	// Profile is https_spiffe (default) or https_web.
	Profile string `yaml:"profile"`
	// EndpointID is the SPIFFE ID of an https_spiffe endpoint (default
	// spiffe://<trust_domain>/ward/server).
	EndpointID string `yaml:"endpoint_id"`
	// BundleFile is its bootstrap bundle (SPIFFE bundle JSON), read when the
	// relationship is first stored; required for https_spiffe.
	BundleFile string `yaml:"bundle_file"`
	// Network shares this cluster's WireGuard tunnels with the trust
	// domain and relays its tunnels to the agents whose network.federated
	// names it (docs/network.md; https_spiffe only; default false).
	Network bool `yaml:"network"`
	// AllowedGateways bounds where the trust domain's exported services
	// may have their gateways: CIDR prefixes (10.20.0.0/16, any port) and
	// host:port patterns (gw.b.example:15443, *.b.example:15443,
	// gw.b.example:*). A catalog naming a gateway elsewhere is refused.
	// Empty: only the host of Endpoint (docs/federation.md).
	AllowedGateways []string `yaml:"allowed_gateways"`
	// NetworkEndpoints bound where the trust domain's WireGuard endpoints
	// may be (CIDR prefixes; needs Network): a tunnel list naming an
	// endpoint elsewhere is refused. Empty: anywhere but this cluster's
	// own network.overlay_cidrs and network.endpoint_cidrs (docs/network.md).
	NetworkEndpoints []string `yaml:"network_endpoint_cidrs"`
}

// Effective returns f with defaults filled in.
func (f Federation) Effective() Federation {
	if f.RefreshMin == 0 {
		f.RefreshMin = yamlconf.Duration(30 * time.Second)
	}
	if f.RefreshMax == 0 {
		f.RefreshMax = yamlconf.Duration(time.Hour)
	}
	if f.StaleAfterHints == 0 {
		f.StaleAfterHints = 3
	}
	if f.WitnessInterval == 0 {
		f.WitnessInterval = yamlconf.Duration(time.Minute)
	}
	td := make([]FederatedDomain, len(f.TrustDomains))
	for i, d := range f.TrustDomains {
		if d.Profile == "" {
			d.Profile = "https_spiffe"
		}
		if d.EndpointID == "" && d.Profile == "https_spiffe" && d.TrustDomain != "" {
			d.EndpointID = "spiffe://" + d.TrustDomain + "/ward/server"
		}
		td[i] = d
	}
	f.TrustDomains = td
	return f
}

func (f *Federation) validate(own string) error {
	e := f.Effective()
	if time.Duration(e.RefreshMin) < time.Second || e.RefreshMax < e.RefreshMin {
		return fmt.Errorf("federation.refresh_min (%s) must be at least 1s and at most refresh_max (%s)", time.Duration(e.RefreshMin), time.Duration(e.RefreshMax))
	}
	if time.Duration(e.WitnessInterval) < time.Second {
		return fmt.Errorf("federation.witness_interval (%s) must be at least 1s", time.Duration(e.WitnessInterval))
	}
	if e.StaleAfterHints < 1 {
		return fmt.Errorf("federation.stale_after_hints must be at least 1")
	}
	be := e.BundleEndpoint
	for _, a := range []struct{ field, addr string }{{"federation.bundle_endpoint.address", be.Address}, {"federation.bundle_endpoint.web_address", be.WebAddress}} {
		if a.addr == "" {
			continue
		}
		if err := ValidateListenAddress(a.field, a.addr); err != nil {
			return err
		}
	}
	if be.WebAddress != "" && (be.CertFile == "" || be.KeyFile == "") {
		return fmt.Errorf("federation.bundle_endpoint.web_address needs cert_file and key_file (the Web PKI certificate and key)")
	}
	if be.Address != "" && be.Address == be.WebAddress {
		return fmt.Errorf("federation.bundle_endpoint: address and web_address are both %s; give them different ports", be.Address)
	}
	seen := map[string]bool{}
	for i, d := range e.TrustDomains {
		where := fmt.Sprintf("federation.trust_domains[%d]", i)
		td, err := spiffeid.TrustDomainFromString(d.TrustDomain)
		if err != nil {
			return fmt.Errorf("%s.trust_domain %q: %v", where, d.TrustDomain, err)
		}
		if td.Name() == own {
			return fmt.Errorf("%s: %s is this authority's own trust domain", where, td)
		}
		if seen[td.Name()] {
			return fmt.Errorf("%s: %s is declared twice", where, td)
		}
		seen[td.Name()] = true
		if u, err := url.Parse(d.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%s.endpoint %q must be an https:// URL", where, d.Endpoint)
		}
		switch d.Profile {
		case "https_spiffe":
			id, err := spiffeid.FromString(d.EndpointID)
			if err != nil || !id.MemberOf(td) {
				return fmt.Errorf("%s.endpoint_id %q must be a SPIFFE ID in %s", where, d.EndpointID, td)
			}
			if d.BundleFile == "" {
				return fmt.Errorf("%s.bundle_file is required for https_spiffe: the bootstrap bundle of %s (`ward ca bundle --format spiffe` on its authority)", where, td)
			}
		case "https_web":
			if d.EndpointID != "" {
				return fmt.Errorf("%s.endpoint_id: profile https_web takes none", where)
			}
		default:
			return fmt.Errorf("%s.profile %q: use https_spiffe or https_web", where, d.Profile)
		}
		if _, err := catalog.ParseGatewayAllow(d.AllowedGateways); err != nil {
			return fmt.Errorf("%s.%v", where, err)
		}
		if len(d.NetworkEndpoints) > 0 && !d.Network {
			return fmt.Errorf("%s.network_endpoint_cidrs bound the tunnels of a relationship with network: true; set it too, or drop them", where)
		}
		for _, c := range d.NetworkEndpoints {
			if p, err := netip.ParsePrefix(c); err != nil || p.Bits() == 0 {
				return fmt.Errorf("%s.network_endpoint_cidrs: %q is not a CIDR prefix narrower than everything (e.g. 198.51.100.0/24)", where, c)
			}
		}
	}
	return nil
}
