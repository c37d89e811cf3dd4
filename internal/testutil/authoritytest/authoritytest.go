// Package authoritytest is the in-process test authority tests share: a
// trust domain's real CA (initialised) and registry over an in-memory store,
// recording the audit events they emit. Tests put the part under test on top
// of it: the real Node API (the nodeapi tests, and the agent's tests, which
// talk to it over mTLS), a Workload API (testutil/proxytest, the workloadapi
// tests), the admin API, federation. Configure it with functional options.
package authoritytest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// DefaultTrustDomain is the trust domain when WithTrustDomain is not given.
const DefaultTrustDomain = "test.example.org"

// Authority is a CA and a registry of one trust domain over one store.
type Authority struct {
	TD       spiffeid.TrustDomain
	Store    store.Store
	CA       *ca.CA
	Registry *registry.Registry
	// Now is the clock every part was given.
	Now func() time.Time
	// AuditLog and Hasher, with WithAuditLog: the signed log every event
	// is appended to (context values HMACed by Hasher), as in the server.
	AuditLog *audit.Log
	Hasher   *audit.Hasher
	// KMS, with WithKMS, and Policy, with WithPolicy, are on Store and
	// record into the authority.
	KMS    *kms.Manager
	Policy *policystore.Store

	hook   func(context.Context, audit.Event) error
	logRec audit.Recorder

	mu     sync.Mutex
	events []audit.Event
}

type options struct {
	td    string
	caCfg func(*ca.Config)
	now   func() time.Time
	st    store.Store
	hook  func(context.Context, audit.Event) error
	// overlay is the registry's network.overlay_cidrs.
	overlay []netip.Prefix
	// limits are the registry's per-agent bounds (zero: defaults).
	limits registry.IssueLimits

	auditLog, kms, policy, overlaySet bool
}

// Option configures an Authority.
type Option func(*options)

// Everywhere is an overlay covering every prefix narrower than /0: the
// registry's WireGuard network on without an overlay bound (the default
// here, so tests of the other tunnel checks need not name one).
var Everywhere = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1"),
	netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/1")}

// WithOverlay sets the registry's overlay ranges (network.overlay_cidrs;
// default Everywhere; none: the WireGuard network is off).
func WithOverlay(p ...netip.Prefix) Option {
	return func(o *options) { o.overlay = p; o.overlaySet = true }
}

// WithIssueLimits sets the registry's per-agent bounds (identity.max_*;
// zero fields take the defaults).
func WithIssueLimits(l registry.IssueLimits) Option { return func(o *options) { o.limits = l } }

// WithTrustDomain names the trust domain (default DefaultTrustDomain).
func WithTrustDomain(td string) Option { return func(o *options) { o.td = td } }

// WithCAConfig adjusts the CA's configuration (TTLs, key types) before it
// opens; the trust domain is already set.
func WithCAConfig(f func(*ca.Config)) Option { return func(o *options) { o.caCfg = f } }

// WithClock gives the CA and the registry a clock (a testutil/clock.Fake's
// Now, usually); the default is time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithStore puts the authority on st instead of a fresh memstore (a store
// with fault hooks, a bbolt file).
func WithStore(st store.Store) Option { return func(o *options) { o.st = st } }

// WithAuditHook calls hook with every audit event after it is recorded;
// its error fails the audited operation (an audit log that is down).
func WithAuditHook(hook func(context.Context, audit.Event) error) Option {
	return func(o *options) { o.hook = hook }
}

// WithAuditLog appends every event to a real signed audit log on the
// authority's store (a fresh P-256 signing key, origin "ward/<trust
// domain>"), through the recorder the server uses.
func WithAuditLog() Option { return func(o *options) { o.auditLog = true } }

// WithKMS adds a KMS (the default classification table) on the store.
func WithKMS() Option { return func(o *options) { o.kms = true } }

// WithPolicy adds a policy store on the store; its deny-list carries the
// CA's tainted keys.
func WithPolicy() Option { return func(o *options) { o.policy = true } }

// Open builds and initialises the authority.
func Open(ctx context.Context, opts ...Option) (*Authority, error) {
	o := options{td: DefaultTrustDomain, now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	td, err := spiffeid.TrustDomainFromString(o.td)
	if err != nil {
		return nil, fmt.Errorf("authoritytest: trust domain %q: %w", o.td, err)
	}
	if o.st == nil {
		o.st = memstore.New()
	}
	cfg := ca.Config{TrustDomain: td}
	if o.caCfg != nil {
		o.caCfg(&cfg)
	}
	c, err := ca.Open(ctx, o.st, cfg, o.now)
	if err != nil {
		return nil, err
	}
	if err := c.Init(ctx); err != nil {
		return nil, err
	}
	a := &Authority{TD: td, Store: o.st, CA: c, Now: o.now, hook: o.hook}
	if o.auditLog {
		if err := a.openAuditLog(ctx); err != nil {
			return nil, err
		}
	}
	if !o.overlaySet {
		o.overlay = Everywhere
	}
	a.Registry, err = registry.New(o.st, registry.Options{TrustDomain: td, Audit: a, Clock: o.now, OverlayCIDRs: o.overlay, Limits: o.limits})
	if err != nil {
		return nil, err
	}
	if o.kms {
		if a.KMS, err = kms.New(o.st, randomKey(), kms.DefaultTable(), a); err != nil {
			return nil, err
		}
	}
	if o.policy {
		a.Policy = policystore.New(o.st, a, policystore.WithTaintedKeys(c.TaintedKeyIDs))
	}
	return a, nil
}

func (a *Authority) openAuditLog(ctx context.Context) error {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if a.AuditLog, err = audit.Open(ctx, a.Store, signer, "ward/"+a.TD.Name()); err != nil {
		return err
	}
	if a.Hasher, err = audit.NewHasher(randomKey()); err != nil {
		return err
	}
	a.logRec = audit.NewLogRecorder(a.AuditLog, a.Hasher)
	return nil
}

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// New is Open for a test: it fails the test on an error and closes the
// audit log when the test ends.
func New(t testing.TB, opts ...Option) *Authority {
	t.Helper()
	a, err := Open(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if a.AuditLog != nil {
		t.Cleanup(func() { a.AuditLog.Close() })
	}
	return a
}

// Record implements audit.Recorder, the recorder every part of the
// authority is given: it keeps ev, appends it to the audit log (with
// WithAuditLog) and passes it to the audit hook.
func (a *Authority) Record(ctx context.Context, ev audit.Event) error {
	a.mu.Lock()
	a.events = append(a.events, ev)
	a.mu.Unlock()
	if a.logRec != nil {
		if err := a.logRec.Record(ctx, ev); err != nil {
			return err
		}
	}
	if a.hook != nil {
		return a.hook(ctx, ev)
	}
	return nil
}

// Events returns the audit events of operation op ("agent.attest",
// "svid.x509.sign", ...) recorded so far; op "" returns all of them.
func (a *Authority) Events(op string) []audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []audit.Event
	for _, ev := range a.events {
		if op == "" || ev.Operation == op {
			out = append(out, ev)
		}
	}
	return out
}

// ID is the SPIFFE ID of path in the trust domain.
func (a *Authority) ID(path string) spiffeid.ID { return spiffeid.RequireFromPath(a.TD, path) }

// IssueSVID signs an X509-SVID for id with a fresh P-256 key (TTL ttl, 0 =
// the CA's default; DNS SANs dnsNames): the chain (leaf first) and the key.
func (a *Authority) IssueSVID(ctx context.Context, id spiffeid.ID, ttl time.Duration, dnsNames ...string) ([]*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	chain, err := a.CA.SignX509SVID(ctx, ca.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: ttl, DNSNames: dnsNames})
	if err != nil {
		return nil, nil, fmt.Errorf("authoritytest: sign an SVID for %s: %w", id, err)
	}
	return chain, key, nil
}

// JoinToken creates a join token (one minute) for an agent at agentPath
// ("" = the registry's default path).
func (a *Authority) JoinToken(t testing.TB, agentPath string) string {
	t.Helper()
	tok, err := a.Registry.CreateJoinToken(context.Background(), time.Minute, agentPath)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// BundlePEM is the CA's X.509 roots in PEM, the agent's trust_bundle_path.
func (a *Authority) BundlePEM(t testing.TB) []byte {
	t.Helper()
	b, err := a.CA.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.X509Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ActiveIntermediate is the key ID of the active intermediate CA as the
// admin API's CA service shows it.
func ActiveIntermediate(t testing.TB, c wardv1.CAClient) string {
	t.Helper()
	st, err := c.ShowCA(context.Background(), &wardv1.ShowCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range st.Keys {
		if k.Kind == "intermediate" && k.State == "active" {
			return k.Id
		}
	}
	t.Fatal("no active intermediate")
	return ""
}
