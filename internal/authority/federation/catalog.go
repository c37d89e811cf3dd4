package federation

// The services catalog (docs/gateway.md). This trust domain's exported
// services (`ward service export`, or the server config) are stored behind
// the barrier under one key with a sequence that only grows, every change
// audited. Federated authorities follow it like the revocations: a
// long-poll on the https_spiffe bundle endpoint (CatalogPath), mTLS between
// server IDs, each side verified with the other's federated bundle only.
// What is received is checked (the publisher's own services only, bounded
// size, sequence never backwards), audited, stored behind the barrier (a
// partitioned authority keeps the last catalog it received) and carried,
// with the local catalog, in every policy version this authority pushes
// (policy.Bundle.Services), so agents, proxies and gateways get it over
// the policy stream they already follow.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/errs"
)

const (
	// CatalogPath is where the https_spiffe bundle endpoint serves this
	// trust domain's exported services to federated authorities (mTLS).
	CatalogPath = "/ward/federation/v1/catalog"
	// MaxCatalogUpdate bounds one catalog (bytes of JSON).
	MaxCatalogUpdate = 512 << 10

	catalogLocalKey     = "catalog/local"
	catalogRemotePrefix = "federation-catalog/"
	catalogHeader       = "Ward-Catalog"
)

// Catalog is one trust domain's exported services at a sequence.
type Catalog struct {
	TrustDomain string            `json:"trust_domain"`
	Sequence    uint64            `json:"sequence"`
	Services    []catalog.Service `json:"services"`
}

// CatalogSource publishes this trust domain's catalog: it returns it once
// its sequence is above after, or the current one when ctx ends first.
type CatalogSource interface {
	WaitCatalog(ctx context.Context, after uint64) (Catalog, error)
}

// LocalService is an exported service of this trust domain and where its
// export comes from (SourceAPI or SourceConfig).
type LocalService struct {
	catalog.Service
	Source string `json:"source"`
}

// localCatalog is what is stored under catalogLocalKey.
type localCatalog struct {
	Sequence uint64         `json:"sequence"`
	Services []LocalService `json:"services"`
}

type receivedCatalog struct {
	Catalog
	ReceivedAt time.Time `json:"received_at"`
}

// catalogState is the Manager's catalog memory (Manager.cat).
type catalogState struct {
	mu      sync.Mutex
	local   localCatalog
	changed chan struct{} // closed and replaced when local changes
	remote  map[spiffeid.TrustDomain]receivedCatalog
	errs    map[spiffeid.TrustDomain]string

	defGateway, defForwardHost string
}

func newCatalogState() *catalogState {
	return &catalogState{changed: make(chan struct{}), remote: map[spiffeid.TrustDomain]receivedCatalog{},
		errs: map[spiffeid.TrustDomain]string{}}
}

func catalogRemoteKey(td spiffeid.TrustDomain) string { return catalogRemotePrefix + td.Name() }

// loadCatalogs reads the stored local and received catalogs (Reload).
func (m *Manager) loadCatalogs(ctx context.Context) error {
	var local localCatalog
	kv, err := m.opts.Store.Get(ctx, catalogLocalKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return errs.Errorf(errs.Unavailable, "%w: reading the services catalog: %v", ErrUnavailable, err)
	default:
		if err := json.Unmarshal(kv.Value, &local); err != nil {
			return fmt.Errorf("federation: the stored services catalog does not parse: %w", err)
		}
	}
	kvs, err := m.opts.Store.List(ctx, catalogRemotePrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing received catalogs: %v", ErrUnavailable, err)
	}
	c := m.cat
	c.mu.Lock()
	defer c.mu.Unlock()
	if local.Sequence > c.local.Sequence {
		c.local = local
		close(c.changed)
		c.changed = make(chan struct{})
	}
	for _, kv := range kvs {
		var r receivedCatalog
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.opts.Log.Error("skipping a stored catalog", "key", kv.Key, "err", err)
			continue
		}
		td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
		if err != nil || catalogRemoteKey(td) != kv.Key {
			m.opts.Log.Error("skipping a stored catalog", "key", kv.Key, "trust_domain", r.TrustDomain)
			continue
		}
		if old, ok := c.remote[td]; ok && old.Sequence > r.Sequence {
			continue
		}
		c.remote[td] = r
	}
	return nil
}

// LocalServices returns this trust domain's exported services and the
// catalog's sequence.
func (m *Manager) LocalServices() ([]LocalService, uint64) {
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	return append([]LocalService(nil), m.cat.local.Services...), m.cat.local.Sequence
}

// WaitCatalog implements CatalogSource with this trust domain's catalog
// (forward addresses left out: they stay inside the trust domain).
func (m *Manager) WaitCatalog(ctx context.Context, after uint64) (Catalog, error) {
	for {
		m.cat.mu.Lock()
		local, ch := m.cat.local, m.cat.changed
		m.cat.mu.Unlock()
		if local.Sequence > after || ctx.Err() != nil {
			svcs := make([]catalog.Service, len(local.Services))
			for i, s := range local.Services {
				svcs[i] = s.Service
			}
			return Catalog{TrustDomain: m.opts.TrustDomain.Name(), Sequence: local.Sequence, Services: catalog.Public(svcs)}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

// ExportService adds or replaces the exported service s.Name of this trust
// domain (audited "catalog.export"; source is SourceAPI or SourceConfig; a
// service declared in the config is only changed by the config).
func (m *Manager) ExportService(ctx context.Context, s catalog.Service, source string) error {
	td := m.opts.TrustDomain.Name()
	if err := catalog.CheckOne(td, s); err != nil {
		return errs.Errorf(errs.Invalid, "%v", err)
	}
	if s.Forward == "" {
		return errs.Errorf(errs.Invalid, "service %s: no forward address (the inbound proxy listener its gateway forwards to)", s.Name)
	}
	m.cat.mu.Lock()
	for _, old := range m.cat.local.Services {
		if old.Service == s && old.Source == source {
			m.cat.mu.Unlock()
			return nil // as exported already: nothing to store or audit
		}
	}
	m.cat.mu.Unlock()
	fields := map[string]string{"service": s.Name, "spiffe_id": s.SPIFFEID, "gateway": s.Gateway, "forward": s.Forward, "source": source}
	return m.changeCatalog(ctx, "catalog.export", fields, func(l *localCatalog) (bool, error) {
		for i, old := range l.Services {
			if old.Name != s.Name {
				continue
			}
			if old.Source == SourceConfig && source != SourceConfig {
				return false, errs.Errorf(errs.Precondition, "service %s is exported by the server config: change it there and restart", s.Name)
			}
			if old.Service == s && old.Source == source {
				return false, nil
			}
			l.Services[i] = LocalService{Service: s, Source: source}
			return true, nil
		}
		if len(l.Services) >= catalog.MaxServices {
			return false, errs.Errorf(errs.Precondition, "the catalog holds %d services, the limit", catalog.MaxServices)
		}
		l.Services = append(l.Services, LocalService{Service: s, Source: source})
		return true, nil
	})
}

// UnexportService removes the exported service name (audited
// "catalog.unexport"). force allows removing one declared in the config
// (the server does, for services no longer in it).
func (m *Manager) UnexportService(ctx context.Context, name string, force bool) error {
	return m.changeCatalog(ctx, "catalog.unexport", map[string]string{"service": name}, func(l *localCatalog) (bool, error) {
		for i, old := range l.Services {
			if old.Name == name {
				if old.Source == SourceConfig && !force {
					return false, errs.Errorf(errs.Precondition, "service %s is exported by the server config: remove it there and restart", name)
				}
				l.Services = append(l.Services[:i], l.Services[i+1:]...)
				return true, nil
			}
		}
		return false, errs.Errorf(errs.NotFound, "%w: no exported service %s (ward service list)", ErrNotFound, name)
	})
}

// changeCatalog applies fn to the stored local catalog (compare-and-swap,
// so authorities sharing a store never lose a change nor reuse a
// sequence), audited, and publishes the new catalog.
func (m *Manager) changeCatalog(ctx context.Context, op string, fields map[string]string, fn func(*localCatalog) (bool, error)) error {
	var changed bool
	err := m.audited(ctx, op, fields, func() error {
		for range 10 {
			var l localCatalog
			var rev int64
			kv, err := m.opts.Store.Get(ctx, catalogLocalKey)
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return errs.Errorf(errs.Unavailable, "%w: reading the services catalog: %v", ErrUnavailable, err)
			default:
				if err := json.Unmarshal(kv.Value, &l); err != nil {
					return fmt.Errorf("federation: the stored services catalog does not parse: %w", err)
				}
				rev = kv.Revision
			}
			ok, err := fn(&l)
			if err != nil || !ok {
				return err
			}
			l.Sequence++
			fields["sequence"] = strconv.FormatUint(l.Sequence, 10)
			v, err := json.Marshal(l)
			if err != nil {
				return err
			}
			if _, err := m.opts.Store.CompareAndSwap(ctx, catalogLocalKey, v, rev); errors.Is(err, store.ErrConflict) {
				continue
			} else if err != nil {
				return errs.Errorf(errs.Unavailable, "%w: storing the services catalog: %v", ErrUnavailable, err)
			}
			m.cat.mu.Lock()
			if l.Sequence > m.cat.local.Sequence {
				m.cat.local = l
				close(m.cat.changed)
				m.cat.changed = make(chan struct{})
			}
			m.cat.mu.Unlock()
			changed = true
			return nil
		}
		return errs.Errorf(errs.Unavailable, "%w: the services catalog kept changing under %s; retry", ErrUnavailable, op)
	})
	if err == nil && changed && m.opts.OnCatalog != nil {
		m.opts.OnCatalog(ctx, m.opts.TrustDomain, fields)
	}
	return err
}

// Services returns the catalog every policy version carries: this trust
// domain's services (with their forward addresses) and the last catalog
// received from every federated trust domain.
func (m *Manager) Services() map[string][]catalog.Service {
	m.mu.Lock()
	federated := map[spiffeid.TrustDomain]Relationship{}
	for td, e := range m.entries {
		federated[td] = e.rel
	}
	m.mu.Unlock()
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	out := map[string][]catalog.Service{}
	if len(m.cat.local.Services) > 0 {
		svcs := make([]catalog.Service, len(m.cat.local.Services))
		for i, s := range m.cat.local.Services {
			svcs[i] = s.Service
		}
		if got, err := catalog.Check(m.opts.TrustDomain.Name(), svcs); err == nil {
			out[m.opts.TrustDomain.Name()] = got
		}
	}
	for td, r := range m.cat.remote {
		rel, ok := federated[td]
		if !ok || len(r.Services) == 0 {
			continue
		}
		// Accepted under an earlier relationship: a catalog whose
		// gateways its allowed_gateways no longer allow is not carried.
		if err := gatewaysAllowed(rel, r.Services); err != nil {
			m.opts.Log.Warn("not carrying the catalog of a federated authority", "trust_domain", td.Name(), "err", err)
			continue
		}
		out[td.Name()] = r.Services
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// CatalogStatus is the state of the catalog channel with one trust domain.
type CatalogStatus struct {
	Sequence   uint64
	Has        bool
	ReceivedAt time.Time
	Services   []catalog.Service
	LastError  string
}

// RemoteCatalog returns the catalog channel's state with td.
func (m *Manager) RemoteCatalog(td spiffeid.TrustDomain) CatalogStatus {
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	r, ok := m.cat.remote[td]
	return CatalogStatus{Sequence: r.Sequence, Has: ok, ReceivedAt: r.ReceivedAt, Services: r.Services, LastError: m.cat.errs[td]}
}

func (m *Manager) setCatalogErr(td spiffeid.TrustDomain, e string) {
	setChannelErr(&m.cat.mu, m.cat.errs, td, e)
}

// forgetCatalog drops what td sent (its relationship was removed).
func (m *Manager) forgetCatalog(ctx context.Context, td spiffeid.TrustDomain) error {
	if err := m.opts.Store.Delete(ctx, catalogRemoteKey(td)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return errs.Errorf(errs.Unavailable, "%w: deleting the received catalog: %v", ErrUnavailable, err)
	}
	m.cat.mu.Lock()
	delete(m.cat.remote, td)
	delete(m.cat.errs, td)
	m.cat.mu.Unlock()
	return nil
}

// AcceptCatalog checks a catalog received from td's authority, audits it
// (accepted or refused: one whose audit event cannot be written is not
// installed), stores it and, when it changed, calls Options.OnCatalog
// (acceptDoc). Refused: a catalog over MaxCatalogUpdate or
// catalog.MaxServices, one that does not parse, one for another trust
// domain or naming another trust domain's identities, a bad service name
// or gateway address, a gateway the relationship's allowed_gateways do
// not allow (Relationship.GatewayAllow), a sequence older than the last
// accepted one (a replay, or a peer rolled back), the same sequence with
// other content.
func (m *Manager) AcceptCatalog(ctx context.Context, td spiffeid.TrustDomain, body []byte) error {
	e, federated := m.get(td)
	return acceptDoc(ctx, m, td, body, acceptSpec[Catalog]{
		event: "federation.catalog", noun: "catalog", own: "services", max: MaxCatalogUpdate, key: catalogRemoteKey(td),
		refusedLog: "refused the catalog of a federated authority", acceptedLog: "catalog received from a federated authority",
		allowed: func() string {
			if !federated {
				return "no federation relationship with " + td.Name()
			}
			return ""
		},
		prev: func() (Catalog, bool) {
			m.cat.mu.Lock()
			defer m.cat.mu.Unlock()
			r, ok := m.cat.remote[td]
			return r.Catalog, ok
		},
		check: func(u *Catalog, fields map[string]string) error {
			for _, s := range u.Services {
				if s.Forward != "" {
					return fmt.Errorf("service %s carries a forward address (only the gateway's address crosses trust domains)", s.Name)
				}
			}
			svcs, err := catalog.Check(td.Name(), u.Services)
			if err != nil {
				return err
			}
			names := make([]string, len(svcs))
			for i, s := range svcs {
				names[i] = s.Name + "=" + s.SPIFFEID + "@" + s.Gateway
			}
			fields["services"] = auditNames(names)
			if err := gatewaysAllowed(e.rel, svcs); err != nil {
				return err
			}
			u.Services = svcs
			return nil
		},
		same:   func(a, b Catalog) bool { return catalog.Equal(a.Services, b.Services) },
		setErr: func(e string) { m.setCatalogErr(td, e) },
		stored: func(u Catalog, at time.Time) (any, func()) {
			r := receivedCatalog{Catalog: Catalog{TrustDomain: td.Name(), Sequence: u.Sequence, Services: u.Services}, ReceivedAt: at}
			return r, keepIn(&m.cat.mu, m.cat.remote, td, r)
		},
		done: func(ctx context.Context, u Catalog, changed bool, fields map[string]string) []any {
			if changed && m.opts.OnCatalog != nil {
				m.opts.OnCatalog(ctx, td, fields)
			}
			return []any{"services", len(u.Services)}
		},
	})
}

// gatewaysAllowed refuses services whose gateway rel's allowed_gateways
// do not allow (a peer naming an address of its choosing, for this
// cluster's proxies to dial).
func gatewaysAllowed(rel Relationship, svcs []catalog.Service) error {
	allow, err := rel.GatewayAllow()
	if err != nil {
		return err
	}
	for _, s := range svcs {
		if !allow.Permits(s.Gateway) {
			where := "the relationship's allowed_gateways"
			if len(rel.AllowedGateways) == 0 {
				where = "the host of its bundle endpoint " + rel.EndpointURL + ", the only gateway host allowed while the relationship lists no allowed_gateways"
			}
			return fmt.Errorf("service %s names gateway %s, outside %s: if it is %s's gateway, add it to allowed_gateways of the federation relationship with %s (docs/federation.md)",
				s.Name, s.Gateway, where, rel.TrustDomain.Name(), rel.TrustDomain.Name())
		}
	}
	return nil
}

// RunCatalogs follows the catalog of every federated trust domain whose
// relationship uses https_spiffe, over its bundle endpoint, until ctx ends
// (authenticated like the revocation channel).
func (m *Manager) RunCatalogs(ctx context.Context, c RevocationClient) {
	m.runFollowers(ctx, c, nil, m.followCatalog)
}

// catalogChannel is the catalog channel's long-poll (longpoll.go).
func (m *Manager) catalogChannel() channel {
	return channel{name: "catalog channel", what: "catalog", path: CatalogPath, header: catalogHeader,
		max: MaxCatalogUpdate, accept: m.AcceptCatalog, setErr: m.setCatalogErr,
		after: func(td spiffeid.TrustDomain) (uint64, bool) {
			st := m.RemoteCatalog(td)
			return st.Sequence, st.Has
		},
		notWard: "serves no ward catalog (not a ward authority?)"}
}

func (m *Manager) followCatalog(ctx context.Context, rel Relationship, c RevocationClient) {
	m.follow(ctx, rel, c, m.catalogChannel())
}

// pollCatalog asks rel's endpoint once for a catalog newer than the last
// received.
func (m *Manager) pollCatalog(ctx context.Context, rel Relationship, c RevocationClient) ([]byte, error) {
	return m.poll(ctx, rel, c, m.catalogChannel())
}

// SetServiceDefaults sets what an export without them gets: the gateway
// address (services.gateway) and the host of a forward given as a port
// (services.forward_host, default 127.0.0.1).
func (m *Manager) SetServiceDefaults(gateway, forwardHost string) {
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	m.cat.defGateway, m.cat.defForwardHost = gateway, forwardHost
}

// ServiceDefaults returns what SetServiceDefaults set.
func (m *Manager) ServiceDefaults() (gateway, forwardHost string) {
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	if m.cat.defForwardHost == "" {
		return m.cat.defGateway, "127.0.0.1"
	}
	return m.cat.defGateway, m.cat.defForwardHost
}

// TrustDomain is this authority's own trust domain.
func (m *Manager) TrustDomain() spiffeid.TrustDomain { return m.opts.TrustDomain }

// auditNames is the services field of a federation.catalog event: every
// service while they are few, else the count, the first ones and a digest
// of all (a peer's catalog may hold 1,000 services, and each accepted one
// is an audit event).
func auditNames(names []string) string {
	const show = 16
	if len(names) <= show {
		return fmt.Sprint(names)
	}
	sum := sha256.Sum256([]byte(strings.Join(names, "\n")))
	return fmt.Sprintf("%d services, sha256 %x of all; first %d: %v", len(names), sum, show, names[:show])
}
