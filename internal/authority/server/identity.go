package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/kubeapi"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// identityState holds the workload identity services while unsealed.
type identityState struct {
	ca     *ca.CA
	reg    *registry.Registry
	node   *nodeapi.Server // nil when identity.node_api_address is empty
	fed    *federation.Manager
	bep    *federation.Endpoint // nil when federation.bundle_endpoint is off
	svid   *federation.Endpoint // this authority's server SVID (the bundle endpoint's, or one made for it)
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startIdentity opens the CA over the barrier store (creating root,
// intermediate and JWT key on first unseal), keeps it rotating, opens the
// registry and, if configured, starts the Node API.
func (s *Server) startIdentity(ctx context.Context, st *unsealedState) error {
	ic := s.cfg.Identity.Effective()
	td, err := spiffeid.TrustDomainFromString(s.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("trust_domain: %w", err)
	}
	bs := s.barrier.Store()
	c, err := ca.Open(ctx, bs, ca.Config{TrustDomain: td, KeyType: ca.KeyType(ic.KeyType),
		SVIDTTL: time.Duration(ic.SVIDTTL), MaxSVIDTTL: time.Duration(ic.MaxSVIDTTL), JWTSVIDTTL: time.Duration(ic.JWTSVIDTTL),
		IntermediateTTL: time.Duration(ic.IntermediateTTL), RootTTL: time.Duration(ic.RootTTL), RefreshHint: time.Duration(ic.RefreshHint)}, nil)
	if err != nil {
		return fmt.Errorf("opening the CA: %w", err)
	}
	if !c.Initialized() {
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("initialising the CA of %s: %w", td, err)
		}
		ev := s.event(reqctx.From(ctx), "ca.init", audit.ResultOK, "")
		ev.Fields = map[string]string{"trust_domain": td.Name()}
		if err := st.recorder.Record(ctx, ev); err != nil {
			return fmt.Errorf("audit log unavailable: %w", err)
		}
	}
	reg, err := registry.New(bs, registry.Options{TrustDomain: td, Audit: st.recorder,
		MaxEntryTTL: time.Duration(ic.MaxSVIDTTL), MaxTokenTTL: time.Duration(ic.JoinTokenMaxTTL), OverlayCIDRs: s.cfg.Network.Overlay(),
		EndpointCIDRs: s.cfg.Network.Endpoints(), Limits: issueLimits(ic)})
	if err != nil {
		return err
	}
	id := &identityState{ca: c, reg: reg}
	if id.fed, err = s.openFederation(ctx, st, td); err != nil {
		return err
	}
	st.fed.Store(id.fed)
	// After the Store: publishing the catalog reads it from st.fed.
	if err := s.declareServices(ctx, st, id.fed); err != nil {
		return err
	}
	if ic.NodeAPIAddress != "" {
		var roots *x509.CertPool
		if ic.X509PopCABundle != "" {
			if roots, err = config.LoadCertPool(ic.X509PopCABundle); err != nil {
				return fmt.Errorf("identity.x509pop_ca_bundle: %w", err)
			}
		}
		psat := map[string]nodeapi.PSATCluster{}
		for _, k := range ic.K8sPSAT {
			kc, err := kubeapi.New(kubeapi.Config{URL: k.APIServer, CAFile: k.CABundle, TokenFile: k.TokenFile})
			if err != nil {
				return fmt.Errorf("identity.k8s_psat cluster %s: %w", k.Cluster, err)
			}
			psat[k.Cluster] = nodeapi.PSATCluster{Reviewer: kc, Audience: k.Audience, AllowedServiceAccounts: k.AllowedServiceAccounts}
		}
		id.node, err = nodeapi.New(nodeapi.Config{CA: c, Registry: reg, Audit: st.recorder, X509PopRoots: roots, PSATClusters: psat,
			AgentSVIDTTL: time.Duration(ic.AgentSVIDTTL), DNSNames: ic.NodeAPIDNSNames, Log: s.log.With("component", "nodeapi"),
			AuditLog: newAuditSource(st.audit), KMS: st.kms, Policy: st.policy, OnDecision: s.metrics.decision,
			FederatedBundles: id.fed.BundleDocuments, ForeignTunnels: foreignTunnels(id.fed),
			OnConnRefused: func(reason string) { s.metrics.nodeAPIRefused.WithLabelValues(reason).Inc() },
			Telemetry:     s.ReportTelemetry, TelemetryInterval: s.drift.telemetryInterval,
			OnTelemetry:         func(reason string) { s.metrics.telemetry.WithLabelValues(reason).Inc() },
			OnSVIDsDisplaced:    func(n int) { s.metrics.svidsDisplaced.Add(float64(n)) },
			AdvertisedEndpoints: s.cfg.Network.AdvertisedEndpoints, Available: s.nodeAvailable, OnRelayDrop: id.fed.ReportRelayDrop})
		if err != nil {
			return err
		}
		if len(s.cfg.Network.OverlayCIDRs) == 0 {
			s.log.Info("the WireGuard network is off: network.overlay_cidrs is not set, agents' tunnel registrations are refused (set it to the overlay's ranges to turn it on, docs/network.md)")
		}
		if err := id.node.Listen(ic.NodeAPIAddress); err != nil {
			return err
		}
		s.log.Info("Node API listening", "address", id.node.Addr().String(), "spiffe_id", nodeapi.ServerID(td).String())
	}
	fc := s.cfg.Federation.Effective()
	if be := fc.BundleEndpoint; be.Address != "" || be.WebAddress != "" {
		id.bep, err = federation.NewEndpoint(federation.EndpointConfig{CA: c, Address: be.Address, WebAddress: be.WebAddress,
			CertFile: be.CertFile, KeyFile: be.KeyFile, Log: s.log.With("component", "federation"),
			Revocations: ownRevocations{ps: st.policy, td: td, available: s.nodeAvailable}, Peers: id.fed, Catalog: cutOffCatalog{id.fed, s.nodeAvailable}, Network: cutOffNetwork{id.fed, s.nodeAvailable},
			OnRevocationRefused: func(reason string) { s.metrics.revocationRefused.WithLabelValues(reason).Inc() },
			Checkpoints:         newAuditSource(st.audit), Cosignatures: id.fed.CosignatureOf,
			OnWitnessRefused: func(reason string) { s.metrics.witnessRefused.WithLabelValues(reason).Inc() },
			OnConnRefused:    func(reason string) { s.metrics.bundleEndpointRefused.WithLabelValues(reason).Inc() }})
		if err == nil {
			err = id.bep.Start()
		}
		if err != nil {
			if id.node != nil {
				id.node.Stop()
			}
			return err
		}
	}
	// This authority's server SVID authenticates it on its peers'
	// revocation channels and to their audit checkpoints (the bundle
	// endpoint's, or one signed for that).
	svidEP := id.bep
	if svidEP == nil {
		if svidEP, err = federation.NewEndpoint(federation.EndpointConfig{CA: c}); err != nil {
			return err
		}
	}
	id.svid = svidEP
	id.fed.SetWitnessSVID(svidEP.SVID) // `ward federation witness` works on every authority
	// Every authority keeps its view of the CA and of the federation
	// current; the jobs that change them (CA rotation, bundle refresh,
	// the revocation, catalog and witness channels) run on the elected
	// leader only (leaderJobs, ha.go).
	jobCtx, cancel := context.WithCancel(context.Background())
	id.cancel = cancel
	id.wg.Add(3)
	go func() {
		defer id.wg.Done()
		c.Follow(jobCtx, 0, func(err error) { s.log.Warn("CA reload", "err", err) })
	}()
	go func() {
		defer id.wg.Done()
		publishTunnels(jobCtx, reg, id.fed, s.log)
	}()
	go func() {
		defer id.wg.Done()
		s.followFederation(jobCtx, id.fed)
	}()
	st.ident.Store(id)
	return nil
}

// stopIdentity stops them on seal.
func (s *Server) stopIdentity(st *unsealedState) {
	id := st.ident.Swap(nil)
	if id == nil {
		return
	}
	if id.node != nil {
		id.node.Stop()
	}
	if id.bep != nil {
		id.bep.Stop()
	}
	id.cancel()
	id.wg.Wait()
}

// NodeAPIAddress is the bound Node API address, or "" when it is off or
// the authority is sealed.
func (s *Server) NodeAPIAddress() string {
	st, err := s.state()
	if err != nil {
		return ""
	}
	id := st.ident.Load()
	if id == nil || id.node == nil {
		return ""
	}
	if a := id.node.Addr(); a != nil {
		return a.String()
	}
	return ""
}

// openFederation opens the federation relationships over the barrier
// store and makes those declared in the config (federation.trust_domains)
// match it.
func (s *Server) openFederation(ctx context.Context, st *unsealedState, td spiffeid.TrustDomain) (*federation.Manager, error) {
	fc := s.cfg.Federation.Effective()
	var roots *x509.CertPool
	if fc.WebRoots != "" {
		var err error
		if roots, err = config.LoadCertPool(fc.WebRoots); err != nil {
			return nil, fmt.Errorf("federation.web_roots: %w", err)
		}
	}
	m, err := federation.Open(ctx, federation.Options{Store: s.barrier.Store(), TrustDomain: td, Audit: st.recorder,
		Log: s.log.With("component", "federation"), MinRefresh: time.Duration(fc.RefreshMin), MaxRefresh: time.Duration(fc.RefreshMax),
		StaleAfterHints: fc.StaleAfterHints, WebRoots: roots, OnRevocations: s.onRevocations(st), Signer: st.signer,
		OwnLog: newAuditSource(st.audit), OnCatalog: s.onCatalog(st),
		OwnNetwork: federation.OwnNetwork{Overlay: s.cfg.Network.Overlay(), Endpoints: s.cfg.Network.Endpoints(), AllowPublic: s.cfg.Network.AllowPublic()}})
	if err != nil {
		return nil, fmt.Errorf("opening federation: %w", err)
	}
	var decl []federation.Relationship
	boot := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for _, d := range fc.TrustDomains {
		ftd, err := spiffeid.TrustDomainFromString(d.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("federation.trust_domains: %w", err)
		}
		r := federation.Relationship{TrustDomain: ftd, EndpointURL: d.Endpoint, Profile: federation.Profile(d.Profile), Network: d.Network,
			AllowedGateways: d.AllowedGateways, NetworkEndpoints: d.NetworkEndpoints}
		if d.EndpointID != "" {
			if r.EndpointID, err = spiffeid.FromString(d.EndpointID); err != nil {
				return nil, fmt.Errorf("federation.trust_domains %s: endpoint_id: %w", ftd, err)
			}
		}
		if _, stored := m.Bundle(ftd); !stored && d.BundleFile != "" {
			doc, err := os.ReadFile(d.BundleFile)
			if err != nil {
				return nil, fmt.Errorf("federation.trust_domains %s: bundle_file: %w", ftd, err)
			}
			if boot[ftd], err = federation.ParseBundle(ftd, doc); err != nil {
				return nil, fmt.Errorf("federation.trust_domains %s: bundle_file %s: %w", ftd, d.BundleFile, err)
			}
		}
		decl = append(decl, r)
	}
	if err := m.Declare(ctx, decl, boot); err != nil {
		return nil, err
	}
	return m, nil
}

// Federation returns the federation relationships while unsealed (nil
// otherwise).
func (s *Server) federation() *federation.Manager {
	st, err := s.state()
	if err != nil {
		return nil
	}
	if id := st.ident.Load(); id != nil {
		return id.fed
	}
	return nil
}

// BundleEndpointAddress is the bound https_spiffe bundle endpoint address,
// or "" when it is off or the authority is sealed.
func (s *Server) BundleEndpointAddress() string {
	st, err := s.state()
	if err != nil {
		return ""
	}
	id := st.ident.Load()
	if id == nil || id.bep == nil {
		return ""
	}
	if a := id.bep.Addr(federation.ProfileSPIFFE); a != nil {
		return a.String()
	}
	return ""
}

// followInterval is how often an authority re-reads what the leader's
// federation jobs stored (relationships, foreign bundles, revocations,
// catalogs, witness memory).
const followInterval = 5 * time.Second

// followFederation re-reads the federation state until ctx ends.
func (s *Server) followFederation(ctx context.Context, m *federation.Manager) {
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Reload(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("federation: re-reading what the leader stored", "err", err)
			}
		}
	}
}

// publishTunnels keeps the federation's copy of this cluster's WireGuard
// tunnels (served to the peers that share the network) current, from the
// registry's tunnel watch, until ctx ends.
func publishTunnels(ctx context.Context, reg *registry.Registry, fed *federation.Manager, log *slog.Logger) {
	for ctx.Err() == nil {
		err := reg.WatchTunnels(ctx, func(ts []registry.Tunnel) error {
			out := make([]federation.NetworkTunnel, len(ts))
			for i, t := range ts {
				out[i] = federation.NetworkTunnel{AgentID: t.AgentID, PublicKey: t.PublicKey, NextKey: t.NextKey,
					Endpoint: t.Endpoint, AllowedIPs: t.AllowedIPs}
			}
			fed.SetLocalTunnels(out)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		log.Warn("federation: watching the tunnels to publish", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// foreignTunnels adapts the federation's received tunnels for the Node
// API's WatchPeers.
func foreignTunnels(fed *federation.Manager) func() (map[string][]registry.Tunnel, <-chan struct{}) {
	return func() (map[string][]registry.Tunnel, <-chan struct{}) {
		got, ch := fed.ForeignTunnels()
		out := make(map[string][]registry.Tunnel, len(got))
		for td, ts := range got {
			l := make([]registry.Tunnel, len(ts))
			for i, t := range ts {
				l[i] = registry.Tunnel{AgentID: t.AgentID, PublicKey: t.PublicKey, NextKey: t.NextKey, Endpoint: t.Endpoint,
					AllowedIPs: t.AllowedIPs}
			}
			out[td.Name()] = l
		}
		return out, ch
	}
}

// issueLimits are the registry's per-agent bounds from the identity
// config (validated there).
func issueLimits(ic config.Identity) registry.IssueLimits {
	l := ic.IssueLimits()
	return registry.IssueLimits{SVIDsPerEntry: l[0].Value(), DisplacedPerEntry: l[1].Value(),
		DisplacementsPerAgent: l[2].Value(), JWTsPerEntry: l[3].Value(), JWTsPerAgent: l[4].Value()}
}
