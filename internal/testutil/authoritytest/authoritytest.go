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
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
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

	hook func(context.Context, audit.Event) error

	mu     sync.Mutex
	events []audit.Event
}

type options struct {
	td    string
	caCfg func(*ca.Config)
	now   func() time.Time
	st    store.Store
	hook  func(context.Context, audit.Event) error
}

// Option configures an Authority.
type Option func(*options)

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
	a.Registry, err = registry.New(o.st, registry.Options{TrustDomain: td, Audit: a, Clock: o.now})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// New is Open for a test: it fails the test on an error.
func New(t testing.TB, opts ...Option) *Authority {
	t.Helper()
	a, err := Open(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Record implements audit.Recorder, the recorder every part of the
// authority is given: it keeps ev and passes it to the audit hook.
func (a *Authority) Record(ctx context.Context, ev audit.Event) error {
	a.mu.Lock()
	a.events = append(a.events, ev)
	a.mu.Unlock()
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
