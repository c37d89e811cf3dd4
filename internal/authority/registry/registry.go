// Package registry keeps workload identity's records in the authority's
// (barrier-encrypted) store: registration entries, single-use join tokens
// and attested agents. Every write is validated first (bad input changes
// nothing), made with compare-and-swap or a conditional batch so several
// authorities can share one store, and audited (fail closed: a mutation
// whose "started" event cannot be written does not happen).
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Store key prefixes (inside the barrier).
const (
	entryPrefix  = "identity/entries/"
	indexPrefix  = "identity/entry-index/"
	tokenPrefix  = "identity/join-tokens/"
	agentPrefix  = "identity/agents/"
	maxCASRetry  = 8
	defaultToken = 10 * time.Minute
)

// Options configures a Registry.
type Options struct {
	// TrustDomain the registry serves. Required.
	TrustDomain spiffeid.TrustDomain
	// Audit records every mutation. Required.
	Audit audit.Recorder
	// MaxEntryTTL bounds an entry's X509-SVID TTL (default 24h).
	MaxEntryTTL time.Duration
	// MaxTokenTTL bounds a join token's lifetime (default 24h).
	MaxTokenTTL time.Duration
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// OverlayCIDRs are the ranges WireGuard tunnels may claim prefixes
	// in (authority config network.overlay_cidrs); every registered
	// prefix must lie inside one. Empty: the WireGuard network is off,
	// every tunnel registration is refused (an agent could otherwise
	// pre-claim any prefix, e.g. a DNS server's /32).
	OverlayCIDRs []netip.Prefix
	// EndpointCIDRs bound the tunnels' WireGuard endpoints
	// (network.endpoint_cidrs): every endpoint's address must lie inside
	// one. Empty: any (the Node API then only takes the address the
	// agent's connection came from, unless advertised endpoints are on,
	// which the config refuses without endpoint_cidrs).
	EndpointCIDRs []netip.Prefix
	// Limits bound what is recorded and displaced per agent (issued.go;
	// authority config identity.max_*): zero fields take the defaults.
	Limits IssueLimits
}

// Registry is the store of entries, join tokens and agents. Safe for
// concurrent use; it keeps no state of its own besides configuration (and
// the tunnel watch its watchers share, a cache of the store), so
// every authority sharing the store sees the same records.
type Registry struct {
	st   store.Store
	opts Options

	hubOnce sync.Once
	hub     *hub // the tunnel watch every WatchTunnels shares (tunnels.go)

	// issuedMu serializes the writes of each agent's issued records on
	// this authority (striped by agent; issued.go: issuedLock).
	issuedMu [64]sync.Mutex
}

// New returns a registry over st (normally the barrier's store view).
func New(st store.Store, opts Options) (*Registry, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("a registry needs a trust domain")
	}
	if opts.Audit == nil {
		return nil, errors.New("a registry needs an audit recorder (mutations are audited, fail closed)")
	}
	if opts.MaxEntryTTL <= 0 {
		opts.MaxEntryTTL = 24 * time.Hour
	}
	if opts.MaxTokenTTL <= 0 {
		opts.MaxTokenTTL = 24 * time.Hour
	}
	opts.Limits = opts.Limits.Effective()
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &Registry{st: st, opts: opts}, nil
}

// TrustDomain returns the trust domain served.
func (r *Registry) TrustDomain() spiffeid.TrustDomain { return r.opts.TrustDomain }

// AgentIDPrefix is the path under which all agent IDs live.
const AgentIDPrefix = "/ward/agent/"

// ServerIDPath is the path of the authority's own SPIFFE ID.
const ServerIDPath = "/ward/server"

// IsAgentID reports whether id is an agent ID of td.
func IsAgentID(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	return id.MemberOf(td) && len(id.Path()) > len(AgentIDPrefix) && id.Path()[:len(AgentIDPrefix)] == AgentIDPrefix
}

func (r *Registry) now() time.Time { return r.opts.Clock().UTC() }

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", errs.Errorf(errs.Internal, "reading randomness: %v", err)
	}
	return hex.EncodeToString(b), nil
}

// event builds an audit event for the caller in ctx.
func event(ctx context.Context, op, result string, fields map[string]string) audit.Event {
	ev := audit.NewEvent(ctx, op, result)
	ev.Fields = fields
	return ev
}

// auditStart writes the "started" event of a mutation; if it cannot be
// written, the mutation is refused.
func (r *Registry) auditStart(ctx context.Context, op string, fields map[string]string) error {
	if err := r.opts.Audit.Record(ctx, event(ctx, op, audit.ResultStarted, fields)); err != nil {
		return errs.Errorf(errs.Unavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	return nil
}

// auditEnd writes the outcome of a mutation and returns opErr (or an error
// if a successful mutation could not be audited).
func (r *Registry) auditEnd(ctx context.Context, op string, fields map[string]string, opErr error) error {
	ev := event(ctx, op, audit.ResultOK, fields)
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
		if errs.KindOf(opErr) == errs.Denied {
			ev.Result = audit.ResultDenied
		}
	}
	if err := r.opts.Audit.Record(ctx, ev); err != nil {
		if opErr != nil {
			return opErr
		}
		return errs.Errorf(errs.Unavailable, "%s was applied but its audit event could not be written: %v", op, err)
	}
	return opErr
}

func storeErr(what string, err error) error {
	if errors.Is(err, store.ErrConflict) {
		return errs.Errorf(errs.Conflict, "%s: changed concurrently; re-read and retry", what)
	}
	return errs.Errorf(errs.Unavailable, "%s: store unavailable: %v", what, err)
}
