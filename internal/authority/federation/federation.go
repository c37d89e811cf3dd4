// Package federation is SPIFFE Federation for one authority: it serves the
// trust domain's bundle at a bundle endpoint (profiles https_spiffe and
// https_web) and keeps the bundles of the foreign trust domains it federates
// with — relationships stored behind the barrier, audited, refreshed on
// their refresh hint, and kept at their last good version through failures
// and restarts. A foreign bundle only ever validates IDs of its own trust
// domain: bundles are never merged.
package federation

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Profile is a bundle endpoint profile of the SPIFFE Federation standard.
type Profile string

const (
	// ProfileSPIFFE authenticates the endpoint by its X509-SVID, verified
	// with the foreign trust domain's own (bootstrap, then last good) bundle.
	ProfileSPIFFE Profile = "https_spiffe"
	// ProfileWeb authenticates the endpoint with Web PKI.
	ProfileWeb Profile = "https_web"
)

// Errors callers may test with errors.Is (and ErrRefused); each also
// carries its errs kind (errs.KindOf) for the API's status codes.
var (
	ErrNotFound    = errors.New("federation: no relationship with that trust domain")
	ErrExists      = errors.New("federation: relationship already exists")
	ErrInvalid     = errors.New("federation: invalid relationship")
	ErrConfigured  = errors.New("federation: relationship is declared in the server config")
	ErrUnavailable = errors.New("federation: store or audit log unavailable")
)

// Source says where a relationship was declared.
const (
	SourceAPI    = "api"
	SourceConfig = "config"
)

// Relationship is a federation relationship with one foreign trust domain.
type Relationship struct {
	TrustDomain spiffeid.TrustDomain
	// EndpointURL is the foreign bundle endpoint (https).
	EndpointURL string
	Profile     Profile
	// EndpointID is the SPIFFE ID the endpoint must present (https_spiffe
	// only); it must be in TrustDomain.
	EndpointID spiffeid.ID
	// Source is SourceAPI or SourceConfig.
	Source string
	// Network shares this cluster's WireGuard tunnels with the trust
	// domain's authority and accepts its tunnels for the agents that ask
	// (network.go; https_spiffe only, off by default).
	Network bool
	// AllowedGateways is where the trust domain's exported services may
	// have their gateways (CIDR prefixes and host:port patterns,
	// catalog.ParseGatewayAllow); a catalog naming a gateway elsewhere is
	// refused. Empty: only the host of EndpointURL (any port).
	AllowedGateways []string
	// NetworkEndpoints bound where the trust domain's WireGuard endpoints
	// may be (CIDR prefixes; Network only): a tunnel list naming an
	// endpoint elsewhere is refused. Empty: anywhere but this cluster's
	// own ranges (Options.OwnNetwork, checkNetworkEndpoint).
	NetworkEndpoints []string
}

// Equal reports whether r and o are the same relationship.
func (r Relationship) Equal(o Relationship) bool {
	return r.TrustDomain == o.TrustDomain && r.EndpointURL == o.EndpointURL && r.Profile == o.Profile &&
		r.EndpointID == o.EndpointID && r.Source == o.Source && r.Network == o.Network &&
		slices.Equal(r.AllowedGateways, o.AllowedGateways) && slices.Equal(r.NetworkEndpoints, o.NetworkEndpoints)
}

// GatewayAllow returns where r's trust domain may place its gateways:
// AllowedGateways, or when it is empty the host of EndpointURL (any
// port: the peer can only point this cluster's proxies at the host its
// bundle endpoint was configured on).
func (r Relationship) GatewayAllow() (catalog.GatewayAllow, error) {
	if len(r.AllowedGateways) > 0 {
		return catalog.ParseGatewayAllow(r.AllowedGateways)
	}
	u, err := url.Parse(r.EndpointURL)
	if err != nil || u.Hostname() == "" {
		return catalog.GatewayAllow{}, fmt.Errorf("endpoint %q has no host", r.EndpointURL)
	}
	return catalog.ParseGatewayAllow([]string{net.JoinHostPort(u.Hostname(), "*")})
}

// Validate checks r against the authority's own trust domain own.
func (r Relationship) Validate(own spiffeid.TrustDomain) error {
	if r.TrustDomain.IsZero() {
		return errs.Errorf(errs.Invalid, "%w: trust domain is required", ErrInvalid)
	}
	if r.TrustDomain == own {
		return errs.Errorf(errs.Invalid, "%w: %s is this authority's own trust domain", ErrInvalid, own)
	}
	u, err := url.Parse(r.EndpointURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return errs.Errorf(errs.Invalid, "%w: endpoint %q must be an https:// URL", ErrInvalid, r.EndpointURL)
	}
	switch r.Profile {
	case ProfileSPIFFE:
		if r.EndpointID.IsZero() {
			return errs.Errorf(errs.Invalid, "%w: profile https_spiffe needs the endpoint's SPIFFE ID (e.g. spiffe://%s/ward/server)", ErrInvalid, r.TrustDomain.Name())
		}
		if !r.EndpointID.MemberOf(r.TrustDomain) {
			return errs.Errorf(errs.Invalid, "%w: endpoint ID %s is not in %s; its bundle could not authenticate it", ErrInvalid, r.EndpointID, r.TrustDomain)
		}
	case ProfileWeb:
		if !r.EndpointID.IsZero() {
			return errs.Errorf(errs.Invalid, "%w: profile https_web takes no endpoint SPIFFE ID", ErrInvalid)
		}
	default:
		return errs.Errorf(errs.Invalid, "%w: profile %q; use https_spiffe or https_web", ErrInvalid, r.Profile)
	}
	if r.Source != SourceAPI && r.Source != SourceConfig {
		return errs.Errorf(errs.Invalid, "%w: source %q", ErrInvalid, r.Source)
	}
	if r.Network && r.Profile != ProfileSPIFFE {
		return errs.Errorf(errs.Invalid, "%w: network needs profile https_spiffe (the tunnels are exchanged between the authorities' server IDs)", ErrInvalid)
	}
	if _, err := r.GatewayAllow(); err != nil {
		return errs.Errorf(errs.Invalid, "%w: %v", ErrInvalid, err)
	}
	if len(r.NetworkEndpoints) > 0 && !r.Network {
		return errs.Errorf(errs.Invalid, "%w: network_endpoint_cidrs bound the tunnels of a relationship with network; set network too, or drop them", ErrInvalid)
	}
	if _, err := ParseNetworkEndpoints(r.NetworkEndpoints); err != nil {
		return errs.Errorf(errs.Invalid, "%w: %v", ErrInvalid, err)
	}
	return nil
}

// Status is a relationship with the state of its foreign bundle.
type Status struct {
	Relationship
	// Bundle is the last good bundle (nil if none: a stored copy that no
	// longer parses).
	Bundle *spiffebundle.Bundle
	// Sequence of Bundle (HasSequence false when it has none).
	Sequence    uint64
	HasSequence bool
	// RefreshHint is the effective interval between refreshes.
	RefreshHint time.Duration
	AddedAt     time.Time
	// LastRefresh is when the endpoint last served an accepted bundle (the
	// bootstrap time until then); the bundle's age counts from it.
	LastRefresh time.Time
	LastAttempt time.Time
	NextRefresh time.Time
	// LastError of the last attempt ("" after a success).
	LastError string
	// Failures since the last success.
	Failures int
	// Stale: no accepted refresh for StaleAfterHints refresh hints.
	Stale bool
	// Revocations is the state of the revocation channel (https_spiffe).
	Revocations RevocationStatus
	// Witness is what this authority witnessed of the peer's audit log
	// (https_spiffe).
	Witness WitnessStatus
	// NetworkChannel is the state of the network channel (network.go).
	NetworkChannel NetworkStatus
}

// record is a relationship as stored under store key "federation/<td>".
type record struct {
	Version     int             `json:"version"`
	TrustDomain string          `json:"trust_domain"`
	EndpointURL string          `json:"endpoint_url"`
	Profile     Profile         `json:"profile"`
	EndpointID  string          `json:"endpoint_id,omitempty"`
	Source      string          `json:"source"`
	Network     bool            `json:"network,omitempty"`
	Gateways    []string        `json:"allowed_gateways,omitempty"`
	NetEnds     []string        `json:"network_endpoint_cidrs,omitempty"`
	Bundle      json.RawMessage `json:"bundle"`
	AddedAt     time.Time       `json:"added_at"`
	LastRefresh time.Time       `json:"last_refresh,omitzero"`
	LastAttempt time.Time       `json:"last_attempt,omitzero"`
	NextRefresh time.Time       `json:"next_refresh,omitzero"`
	LastError   string          `json:"last_error,omitempty"`
	Failures    int             `json:"failures,omitempty"`
}

const (
	recordVersion = 1
	keyPrefix     = "federation/"
)

func storeKey(td spiffeid.TrustDomain) string { return keyPrefix + td.Name() }

// entry is a loaded relationship.
type entry struct {
	rec    record
	rev    int64
	rel    Relationship
	bundle *spiffebundle.Bundle
}

// Options configures a Manager.
type Options struct {
	// Store keeps relationships (pass the barrier's store). Required.
	Store store.Store
	// TrustDomain is this authority's own trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Audit records changes (fail closed). Required.
	Audit audit.Recorder
	// Log receives operational messages (default: discard).
	Log *slog.Logger
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// DefaultRefresh applies to bundles without a refresh hint (default 5m).
	DefaultRefresh time.Duration
	// MinRefresh and MaxRefresh bound a bundle's refresh hint (defaults 30s
	// and 1h); failed attempts retry from MinRefresh, doubling up to the hint.
	MinRefresh, MaxRefresh time.Duration
	// StaleAfterHints: a bundle not refreshed for this many refresh hints is
	// stale (metric, health warning; default 3).
	StaleAfterHints int
	// FetchTimeout bounds one fetch (default 30s).
	FetchTimeout time.Duration
	// WebRoots verifies https_web endpoints (nil: the system roots).
	WebRoots *x509.CertPool
	// OnRevocations is called after revocations received from td changed
	// the remote deny-lists (RemoteDenyLists), with the audit fields:
	// publish them (policystore.RefreshRemote).
	OnRevocations func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string)
	// Signer is this authority's audit checkpoint key: it cosigns the
	// peers' checkpoints this authority witnessed (nil: no witnessing).
	Signer crypto.Signer
	// OwnLog, if set, is this authority's audit log, checked against the
	// cosignatures its peers made on it.
	OwnLog CheckpointSource
	// OnCatalog is called after the services catalog changed (this trust
	// domain's, or the one received from td), with the audit fields:
	// publish it (policystore.RefreshRemote).
	OnCatalog func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string)
	// OwnNetwork is this cluster's own WireGuard ranges (the server's
	// network.overlay_cidrs and network.endpoint_cidrs): no federated
	// endpoint may lie in the overlay, nor in the endpoint ranges unless
	// the relationship's NetworkEndpoints name it (checkNetworkEndpoint).
	OwnNetwork OwnNetwork
}

func (o *Options) setDefaults() error {
	if o.Store == nil || o.Audit == nil || o.TrustDomain.IsZero() {
		return errors.New("federation: Store, Audit and TrustDomain are required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.DefaultRefresh, 5*time.Minute)
	def(&o.MinRefresh, 30*time.Second)
	def(&o.MaxRefresh, time.Hour)
	def(&o.FetchTimeout, 30*time.Second)
	if o.MaxRefresh < o.MinRefresh {
		o.MaxRefresh = o.MinRefresh
	}
	if o.StaleAfterHints <= 0 {
		o.StaleAfterHints = 3
	}
	return nil
}

// Manager holds the relationships of one authority and their bundles. Its
// methods are safe for concurrent use.
type Manager struct {
	opts Options

	mu      sync.Mutex
	entries map[spiffeid.TrustDomain]*entry
	// refreshing serializes refreshes of one trust domain.
	refreshing map[spiffeid.TrustDomain]*sync.Mutex
	wake       chan struct{}
	stats      map[spiffeid.TrustDomain]*counters
	// gen counts local writes and removals, so a Reload whose listing may
	// predate one does not undo it.
	gen uint64
	// remote are the last revocations received from each trust domain,
	// revErr the last error of its channel (revocations.go).
	remote map[spiffeid.TrustDomain]received
	revErr map[spiffeid.TrustDomain]string
	// witness is what was witnessed of each peer's audit log, cosigned
	// the newest cosignature each peer made on this log (witness.go);
	// witnessMu serializes witness rounds.
	witness   map[spiffeid.TrustDomain]*witnessState
	cosigned  map[spiffeid.TrustDomain]cosignedRecord
	witnessMu sync.Mutex
	// witnessSVID authenticates the running witness (RunWitness),
	// witnessWake starts a round at once (a new relationship), ownAlert
	// says this authority's own log does not extend what a peer cosigned.
	witnessSVID func() (*x509svid.SVID, error)
	witnessWake chan struct{}
	ownAlert    map[spiffeid.TrustDomain]*WitnessAlert
	// cat is the services catalog, local and received (catalog.go).
	cat *catalogState
	// net is the WireGuard tunnel lists, local and received (network.go).
	net *netState
}

type counters struct {
	ok, failed, refused                                    uint64
	witnessOK, witnessFailed, witnessRefused, witnessAlert uint64
}

// Open loads the stored relationships.
func Open(ctx context.Context, opts Options) (*Manager, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	m := &Manager{opts: opts, entries: map[spiffeid.TrustDomain]*entry{},
		refreshing: map[spiffeid.TrustDomain]*sync.Mutex{}, wake: make(chan struct{}, 1),
		stats: map[spiffeid.TrustDomain]*counters{}, remote: map[spiffeid.TrustDomain]received{},
		revErr: map[spiffeid.TrustDomain]string{}, witness: map[spiffeid.TrustDomain]*witnessState{},
		cosigned: map[spiffeid.TrustDomain]cosignedRecord{}, witnessWake: make(chan struct{}, 1),
		ownAlert: map[spiffeid.TrustDomain]*WitnessAlert{}, cat: newCatalogState(), net: newNetState()}
	if err := m.Reload(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Reload re-reads every relationship from the store (picking up changes of
// other authorities sharing it).
func (m *Manager) Reload(ctx context.Context) error {
	m.mu.Lock()
	gen := m.gen
	m.mu.Unlock()
	kvs, err := m.opts.Store.List(ctx, keyPrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing federation relationships: %v", ErrUnavailable, err)
	}
	if err := m.loadRevocations(ctx); err != nil {
		return err
	}
	if err := m.loadWitness(ctx); err != nil {
		return err
	}
	if err := m.loadCatalogs(ctx); err != nil {
		return err
	}
	if err := m.loadNetwork(ctx); err != nil {
		return err
	}
	defer m.checkNetShared() // after the entries below, without m.mu
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[spiffeid.TrustDomain]bool{}
	for _, kv := range kvs {
		e, err := m.decode(kv)
		if err != nil {
			m.opts.Log.Error("skipping a stored federation relationship", "key", kv.Key, "err", err)
			continue
		}
		seen[e.rel.TrustDomain] = true
		if old := m.entries[e.rel.TrustDomain]; old != nil && old.rev >= kv.Revision {
			continue // as loaded, or written here after the listing
		}
		m.entries[e.rel.TrustDomain] = e
	}
	if m.gen != gen {
		// Added or removed here while listing: the listing may predate it;
		// the next Reload removes what others removed.
		return nil
	}
	for td := range m.entries {
		if !seen[td] {
			delete(m.entries, td)
		}
	}
	return nil
}

func (m *Manager) decode(kv store.KV) (*entry, error) {
	var rec record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if rec.Version != recordVersion {
		return nil, fmt.Errorf("record version %d, this authority reads %d", rec.Version, recordVersion)
	}
	td, err := spiffeid.TrustDomainFromString(rec.TrustDomain)
	if err != nil || storeKey(td) != kv.Key {
		return nil, fmt.Errorf("record names trust domain %q under key %s", rec.TrustDomain, kv.Key)
	}
	rel := Relationship{TrustDomain: td, EndpointURL: rec.EndpointURL, Profile: rec.Profile, Source: rec.Source, Network: rec.Network,
		AllowedGateways: rec.Gateways, NetworkEndpoints: rec.NetEnds}
	if rec.EndpointID != "" {
		if rel.EndpointID, err = spiffeid.FromString(rec.EndpointID); err != nil {
			return nil, fmt.Errorf("endpoint ID: %w", err)
		}
	}
	e := &entry{rec: rec, rev: kv.Revision, rel: rel}
	if len(rec.Bundle) == 0 {
		return e, nil // https_web before its first fetch
	}
	if b, err := ParseBundle(td, rec.Bundle); err != nil {
		// Keep the relationship visible with its error; nothing validates
		// against it until a good bundle arrives.
		m.opts.Log.Error("stored federated bundle does not parse", "trust_domain", td.Name(), "err", err)
		e.rec.LastError = "stored bundle unusable: " + err.Error()
	} else {
		e.bundle = b
	}
	return e, nil
}

// write stores rec with compare-and-swap against rev and installs it.
func (m *Manager) write(ctx context.Context, rec record, rev int64, b *spiffebundle.Bundle, rel Relationship) (*entry, error) {
	v, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	nrev, err := m.opts.Store.CompareAndSwap(ctx, storeKey(rel.TrustDomain), v, rev)
	if err != nil {
		return nil, err
	}
	e := &entry{rec: rec, rev: nrev, rel: rel, bundle: b}
	m.mu.Lock()
	m.entries[rel.TrustDomain] = e
	m.gen++
	m.mu.Unlock()
	m.netChanged()
	return e, nil
}

func (m *Manager) event(ctx context.Context, op, result string, fields map[string]string) audit.Event {
	ev := audit.NewEvent(ctx, op, result)
	ev.Fields = fields
	return ev
}

// audited runs fn between a "started" event (refused if it cannot be
// written) and its outcome.
func (m *Manager) audited(ctx context.Context, op string, fields map[string]string, fn func() error) error {
	if err := m.opts.Audit.Record(ctx, m.event(ctx, op, audit.ResultStarted, fields)); err != nil {
		return errs.Errorf(errs.Unavailable, "%w: audit log unavailable, %s refused: %v", ErrUnavailable, op, err)
	}
	opErr := fn()
	ev := m.event(ctx, op, audit.ResultOK, fields)
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	if err := m.opts.Audit.Record(ctx, ev); err != nil && opErr == nil {
		return errs.Errorf(errs.Unavailable, "%w: %s was applied but its audit event could not be written: %v", ErrUnavailable, op, err)
	}
	return opErr
}

func relFields(r Relationship) map[string]string {
	f := map[string]string{"trust_domain": r.TrustDomain.Name(), "endpoint": r.EndpointURL, "profile": string(r.Profile), "source": r.Source}
	if !r.EndpointID.IsZero() {
		f["endpoint_id"] = r.EndpointID.String()
	}
	f["network"] = strconv.FormatBool(r.Network)
	if len(r.AllowedGateways) > 0 {
		f["allowed_gateways"] = strings.Join(r.AllowedGateways, ",")
	}
	if len(r.NetworkEndpoints) > 0 {
		f["network_endpoint_cidrs"] = strings.Join(r.NetworkEndpoints, ",")
	}
	return f
}

// Add stores a relationship with its bootstrap bundle (the foreign trust
// domain's bundle obtained out of band: it authenticates the first https_spiffe
// fetch). The first refresh is due at once.
func (m *Manager) Add(ctx context.Context, r Relationship, bootstrap *spiffebundle.Bundle) (Status, error) {
	if r.Source == "" {
		r.Source = SourceAPI
	}
	if err := r.Validate(m.opts.TrustDomain); err != nil {
		return Status{}, err
	}
	if e, ok := m.get(r.TrustDomain); ok && bootstrap == nil && onlyNetworkEndpointsDiffer(e.rel, r) {
		return m.updateNetworkEndpoints(ctx, e, r)
	}
	// https_web authenticates the endpoint with Web PKI, so it may start
	// without a bundle; https_spiffe needs one to authenticate the endpoint.
	if bootstrap != nil || r.Profile == ProfileSPIFFE {
		if err := CheckBundle(r.TrustDomain, bootstrap); err != nil {
			return Status{}, errs.Errorf(errs.Invalid, "%w: bootstrap bundle: %v", ErrInvalid, err)
		}
	}
	fields := relFields(r)
	if bootstrap != nil {
		if seq, ok := bootstrap.SequenceNumber(); ok {
			fields["sequence"] = strconv.FormatUint(seq, 10)
		}
	}
	var st Status
	err := m.audited(ctx, "federation.add", fields, func() error {
		if _, ok := m.get(r.TrustDomain); ok {
			return errs.Errorf(errs.Exists, "%w: %s; remove it first (only network_endpoint_cidrs changes in place: `ward federation update %s --network-endpoint-cidr ...`)", ErrExists, r.TrustDomain, r.TrustDomain)
		}
		var doc []byte
		if bootstrap != nil {
			var err error
			if doc, err = bootstrap.Marshal(); err != nil {
				return errs.Errorf(errs.Invalid, "%w: bootstrap bundle: %v", ErrInvalid, err)
			}
		}
		now := m.opts.Clock().UTC()
		rec := newRecord(r, doc, now)
		e, err := m.write(ctx, rec, 0, bootstrap, r)
		if errors.Is(err, store.ErrConflict) {
			return errs.Errorf(errs.Exists, "%w: %s (added concurrently)", ErrExists, r.TrustDomain)
		}
		if err != nil {
			return errs.Errorf(errs.Unavailable, "%w: storing relationship: %v", ErrUnavailable, err)
		}
		st = m.status(e, now)
		return nil
	})
	if err == nil {
		m.kick()
		select {
		case m.witnessWake <- struct{}{}:
		default:
		}
	}
	return st, err
}

// onlyNetworkEndpointsDiffer reports whether the API relationship r
// differs from the stored one cur in its network_endpoint_cidrs alone:
// the one change Add makes in place (updateNetworkEndpoints).
func onlyNetworkEndpointsDiffer(cur, r Relationship) bool {
	if cur.Source != SourceAPI || r.Source != SourceAPI || slices.Equal(cur.NetworkEndpoints, r.NetworkEndpoints) {
		return false
	}
	c := cur
	c.NetworkEndpoints = r.NetworkEndpoints
	return c.Equal(r)
}

// updateNetworkEndpoints changes the network_endpoint_cidrs of the stored
// relationship e to r's (audited federation.update, with the previous
// value), keeping its bundle and state. The tunnels already accepted from
// the peer are relayed from then on under the new bound only
// (ForeignTunnels checks every endpoint against today's bound; what it
// drops is reported), and the network channel's follower restarts with the new bound (within
// a second, runFollowers), so a list refused under the old one is fetched
// and checked anew.
func (m *Manager) updateNetworkEndpoints(ctx context.Context, e *entry, r Relationship) (Status, error) {
	if _, err := ParseNetworkEndpoints(r.NetworkEndpoints); err != nil {
		return Status{}, errs.Errorf(errs.Invalid, "%w: %v", ErrInvalid, err)
	}
	fields := relFields(r)
	fields["previous_network_endpoint_cidrs"] = strings.Join(e.rel.NetworkEndpoints, ",")
	var st Status
	err := m.audited(ctx, "federation.update", fields, func() error {
		// A refresh (or another authority) may rewrite the record
		// between our read and our write: read it again and retry.
		for attempt := 0; ; attempt++ {
			rec := e.rec
			rec.NetEnds = slices.Clone(r.NetworkEndpoints)
			ne, err := m.write(ctx, rec, e.rev, e.bundle, r)
			if errors.Is(err, store.ErrConflict) && attempt < 20 {
				select {
				case <-ctx.Done():
					return errs.Errorf(errs.Unavailable, "%w: %v", ErrUnavailable, ctx.Err())
				case <-time.After(time.Duration(attempt+1) * 10 * time.Millisecond):
				}
				if err := m.Reload(ctx); err != nil {
					return err
				}
				cur, ok := m.get(r.TrustDomain)
				if !ok {
					return errs.Errorf(errs.NotFound, "%w %s (removed meanwhile)", ErrNotFound, r.TrustDomain)
				}
				if !slices.Equal(cur.rel.NetworkEndpoints, e.rel.NetworkEndpoints) || !onlyNetworkEndpointsDiffer(cur.rel, r) && !cur.rel.Equal(r) {
					return errs.Errorf(errs.Conflict, "%w: the relationship with %s was changed meanwhile by someone else; check it and retry", ErrExists, r.TrustDomain)
				}
				e = cur
				continue
			}
			if errors.Is(err, store.ErrConflict) {
				return errs.Errorf(errs.Conflict, "%w: the relationship with %s keeps changing (refreshes); retry", ErrExists, r.TrustDomain)
			}
			if err != nil {
				return errs.Errorf(errs.Unavailable, "%w: storing relationship: %v", ErrUnavailable, err)
			}
			st = m.status(ne, m.opts.Clock().UTC())
			return nil
		}
	})
	if err != nil {
		return Status{}, err
	}
	m.netChanged()
	m.setNetErr(r.TrustDomain, "")
	m.kick()
	return st, nil
}

func newRecord(r Relationship, doc []byte, now time.Time) record {
	rec := record{Version: recordVersion, TrustDomain: r.TrustDomain.Name(), EndpointURL: r.EndpointURL,
		Profile: r.Profile, Source: r.Source, Network: r.Network, Gateways: slices.Clone(r.AllowedGateways),
		NetEnds: slices.Clone(r.NetworkEndpoints), Bundle: doc, AddedAt: now, NextRefresh: now}
	if doc != nil {
		rec.LastRefresh = now
	}
	if !r.EndpointID.IsZero() {
		rec.EndpointID = r.EndpointID.String()
	}
	return rec
}

// Declare makes the stored relationships with Source config match decl
// (the server config): new ones are added with their bootstrap bundle,
// changed endpoints are updated keeping the last good bundle, and config
// relationships no longer declared are removed. Every change is audited.
func (m *Manager) Declare(ctx context.Context, decl []Relationship, bootstrap map[spiffeid.TrustDomain]*spiffebundle.Bundle) error {
	want := map[spiffeid.TrustDomain]Relationship{}
	for _, r := range decl {
		r.Source = SourceConfig
		if err := r.Validate(m.opts.TrustDomain); err != nil {
			return err
		}
		want[r.TrustDomain] = r
	}
	for td, r := range want {
		e, ok := m.get(td)
		switch {
		case !ok:
			_, err := m.Add(ctx, r, bootstrap[td])
			if errors.Is(err, ErrExists) {
				// Another authority sharing the store declared it first.
				err = m.Reload(ctx)
			}
			if err != nil {
				return fmt.Errorf("federation with %s from the server config: %w", td, err)
			}
		case !e.rel.Equal(r):
			err := m.audited(ctx, "federation.update", relFields(r), func() error {
				for attempt := 0; ; attempt++ {
					rec := e.rec
					rec.EndpointURL, rec.Profile, rec.Source, rec.EndpointID, rec.Network = r.EndpointURL, r.Profile, r.Source, "", r.Network
					rec.Gateways, rec.NetEnds = slices.Clone(r.AllowedGateways), slices.Clone(r.NetworkEndpoints)
					if !r.EndpointID.IsZero() {
						rec.EndpointID = r.EndpointID.String()
					}
					rec.NextRefresh = m.opts.Clock().UTC()
					_, err := m.write(ctx, rec, e.rev, e.bundle, r)
					if !errors.Is(err, store.ErrConflict) {
						return err
					}
					// Changed meanwhile (a refresh, or another authority
					// applying the same config): read it again and apply
					// the change to what is stored now. Returning here
					// left the old relationship (a wider bound, say) in
					// force until the next unseal, audited as updated.
					if attempt >= 20 {
						return errs.Errorf(errs.Conflict, "%w: the relationship with %s keeps changing (refreshes); unseal again", ErrExists, td)
					}
					if err := m.Reload(ctx); err != nil {
						return err
					}
					cur, ok := m.get(td)
					if !ok {
						return errs.Errorf(errs.NotFound, "%w %s (removed meanwhile)", ErrNotFound, td)
					}
					if cur.rel.Equal(r) {
						return nil // another authority applied the same config
					}
					e = cur
				}
			})
			if err != nil {
				return fmt.Errorf("federation with %s from the server config: %w", td, err)
			}
		}
	}
	for _, st := range m.List() {
		if _, ok := want[st.TrustDomain]; !ok && st.Source == SourceConfig {
			if err := m.remove(ctx, st.TrustDomain); err != nil {
				return err
			}
		}
	}
	m.kick()
	return nil
}

// Remove deletes a relationship added through the API; its bundle stops
// being served at once.
func (m *Manager) Remove(ctx context.Context, td spiffeid.TrustDomain) error {
	e, ok := m.get(td)
	if !ok {
		return errs.Errorf(errs.NotFound, "%w %s", ErrNotFound, td)
	}
	if e.rel.Source == SourceConfig {
		return errs.Errorf(errs.Precondition, "%w: remove %s from federation: in the server config and restart", ErrConfigured, td)
	}
	return m.remove(ctx, td)
}

func (m *Manager) remove(ctx context.Context, td spiffeid.TrustDomain) error {
	m.mu.Lock()
	_, hadRevocations := m.remote[td]
	m.mu.Unlock()
	err := m.audited(ctx, "federation.remove", map[string]string{"trust_domain": td.Name()}, func() error {
		if err := m.opts.Store.Delete(ctx, storeKey(td)); err != nil {
			return errs.Errorf(errs.Unavailable, "%w: deleting relationship: %v", ErrUnavailable, err)
		}
		// Its revocations, what was witnessed of its audit log (the pinned
		// key, an alert) and its cosignatures go with it: a new
		// relationship starts over.
		for _, k := range []string{revocationKey(td), witnessKey(td), cosignedKey(td)} {
			if err := m.opts.Store.Delete(ctx, k); err != nil && !errors.Is(err, store.ErrNotFound) {
				return errs.Errorf(errs.Unavailable, "%w: deleting %s: %v", ErrUnavailable, k, err)
			}
		}
		if err := m.forgetCatalog(ctx, td); err != nil {
			return err
		}
		if err := m.forgetNetwork(ctx, td); err != nil {
			return err
		}
		m.mu.Lock()
		delete(m.witness, td)
		delete(m.cosigned, td)
		delete(m.ownAlert, td)
		delete(m.remote, td)
		delete(m.revErr, td)
		delete(m.entries, td)
		delete(m.stats, td)
		m.gen++
		m.mu.Unlock()
		return nil
	})
	if err == nil && hadRevocations && m.opts.OnRevocations != nil {
		// Its section leaves the next policy version.
		m.opts.OnRevocations(ctx, td, map[string]string{"trust_domain": td.Name(), "removed": "true"})
	}
	if err == nil && m.opts.OnCatalog != nil {
		m.opts.OnCatalog(ctx, td, map[string]string{"trust_domain": td.Name(), "removed": "true"})
	}
	return err
}

func (m *Manager) get(td spiffeid.TrustDomain) (*entry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[td]
	return e, ok
}

// Show returns one relationship.
func (m *Manager) Show(td spiffeid.TrustDomain) (Status, error) {
	e, ok := m.get(td)
	if !ok {
		return Status{}, errs.Errorf(errs.NotFound, "%w %s", ErrNotFound, td)
	}
	return m.status(e, m.opts.Clock()), nil
}

// List returns every relationship, by trust domain.
func (m *Manager) List() []Status {
	now := m.opts.Clock()
	m.mu.Lock()
	es := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		es = append(es, e)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(es))
	for _, e := range es {
		out = append(out, m.status(e, now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain.Name() < out[j].TrustDomain.Name() })
	return out
}

// Bundle returns the last good bundle of td (a copy), if federated.
func (m *Manager) Bundle(td spiffeid.TrustDomain) (*spiffebundle.Bundle, bool) {
	e, ok := m.get(td)
	if !ok || e.bundle == nil {
		return nil, false
	}
	return e.bundle.Clone(), true
}

// GetBundleForTrustDomain makes the Manager a spiffebundle.Source of the
// foreign bundles (never this authority's own).
func (m *Manager) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if b, ok := m.Bundle(td); ok {
		return b, nil
	}
	return nil, errs.Errorf(errs.NotFound, "%w %s", ErrNotFound, td)
}

// GetX509BundleForTrustDomain makes the Manager an x509bundle.Source: the
// X.509 authorities of td's bundle, for IDs of td only.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := m.GetBundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	return b.X509Bundle(), nil
}

// GetJWTBundleForTrustDomain makes the Manager a jwtbundle.Source.
func (m *Manager) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b, err := m.GetBundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	return b.JWTBundle(), nil
}

// BundleDocuments returns the SPIFFE bundle JSON of each federated trust
// domain among tds (skipping those not federated), keyed by trust domain
// name: what Sync sends as federated_bundles.
func (m *Manager) BundleDocuments(tds []string) map[string][]byte {
	var out map[string][]byte
	for _, name := range tds {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			continue
		}
		e, ok := m.get(td)
		if !ok || e.bundle == nil {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.Name()] = e.rec.Bundle
	}
	return out
}

func (m *Manager) hint(b *spiffebundle.Bundle) time.Duration {
	h := m.opts.DefaultRefresh
	if b != nil {
		if bh, ok := b.RefreshHint(); ok && bh > 0 {
			h = bh
		}
	}
	return min(max(h, m.opts.MinRefresh), m.opts.MaxRefresh)
}

func (m *Manager) status(e *entry, now time.Time) Status {
	st := Status{Relationship: e.rel, RefreshHint: m.hint(e.bundle), AddedAt: e.rec.AddedAt,
		LastRefresh: e.rec.LastRefresh, LastAttempt: e.rec.LastAttempt, NextRefresh: e.rec.NextRefresh,
		LastError: e.rec.LastError, Failures: e.rec.Failures}
	if e.bundle != nil {
		st.Bundle = e.bundle.Clone()
		st.Sequence, st.HasSequence = e.bundle.SequenceNumber()
	}
	st.Stale = e.bundle == nil || now.Sub(e.rec.LastRefresh) > time.Duration(m.opts.StaleAfterHints)*st.RefreshHint
	st.Revocations = m.Revocation(e.rel.TrustDomain)
	st.Witness = m.Witnessed(e.rel.TrustDomain)
	st.NetworkChannel = m.RemoteNetwork(e.rel.TrustDomain)
	return st
}

// Warnings returns one health warning per stale or unusable bundle.
func (m *Manager) Warnings() []string {
	var w []string
	now := m.opts.Clock()
	for _, st := range m.List() {
		if a := st.Witness.OwnLogAlert; a != nil {
			w = append(w, fmt.Sprintf("federation: AUDIT LOG ROLLBACK of this authority's own audit log: it does not extend the checkpoint of %d events its witness %s cosigned (%s, since %s; see ward federation show %s)",
				a.Remembered.Size, st.TrustDomain, a.Reason, a.At.Format(time.RFC3339), st.TrustDomain))
		}
		if a := st.Witness.Alert; a != nil {
			w = append(w, fmt.Sprintf("federation: AUDIT WITNESS ALERT for %s since %s: its audit log %s (see ward federation show %s)",
				st.TrustDomain, a.At.Format(time.RFC3339), alertWhat(a.Reason), st.TrustDomain))
		}
		switch {
		case st.Bundle == nil:
			w = append(w, fmt.Sprintf("federation: no usable bundle of %s yet (last error: %s)", st.TrustDomain, orNone(st.LastError)))
		case st.Stale:
			w = append(w, fmt.Sprintf("federation: the bundle of %s is %s old, more than %d refresh hints of %s (last error: %s)",
				st.TrustDomain, now.Sub(st.LastRefresh).Truncate(time.Second), m.opts.StaleAfterHints, st.RefreshHint, orNone(st.LastError)))
		}
	}
	return w
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// alertWhat says what a witness alert's reason means.
func alertWhat(reason string) string {
	switch reason {
	case AlertWentBackwards:
		return "went backwards (fewer events than a checkpoint it signed before)"
	case AlertForked:
		return "forked (another root at a size it signed before)"
	case AlertInconsistent:
		return "rewrote its history (a larger checkpoint that does not extend one it signed before)"
	case AlertKeyChanged:
		return "is signed by another key than the pinned one"
	}
	return "was replaced by another log"
}
