package kmsplugin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// APIVersion is the KMS API version Status reports ("v2").
const APIVersion = "v2"

// KeyIDPrefix starts every key_id: "ward:<key name>:<version>".
const KeyIDPrefix = "ward:"

// MaxSeed bounds what Encrypt accepts: the apiserver sends 32-byte DEK
// seeds; anything much larger is not a seed.
const MaxSeed = 1024

// Authority is the part of ward's KMS the plugin calls. Every call goes
// to the authority, which authorizes and audits it like any KMS caller.
type Authority interface {
	// Encrypt seals plaintext under key's active version and returns the
	// ward ciphertext and that version.
	Encrypt(ctx context.Context, key string, plaintext []byte, encCtx map[string]string) ([]byte, uint32, error)
	// Decrypt opens a ward ciphertext (any version still decryptable).
	Decrypt(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, error)
}

// ClientAuthority is the authority over the admin socket (client.Dial).
func ClientAuthority(c *client.Client) Authority { return clientAuthority{c} }

type clientAuthority struct{ c *client.Client }

func (a clientAuthority) Encrypt(ctx context.Context, key string, pt []byte, encCtx map[string]string) ([]byte, uint32, error) {
	r, err := a.c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: key, Plaintext: pt, Context: encCtx})
	if err != nil {
		return nil, 0, err
	}
	return r.Ciphertext, r.KeyVersion, nil
}

func (a clientAuthority) Decrypt(ctx context.Context, ct []byte, encCtx map[string]string) ([]byte, error) {
	r, err := a.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct, Context: encCtx})
	if err != nil {
		return nil, err
	}
	return r.Plaintext, nil
}

// Plugin is the KMS v2 KeyManagementService. Safe for concurrent use.
type Plugin struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	auth      Authority
	key       string
	encCtx    map[string]string
	healthTTL time.Duration
	failTTL   time.Duration // how long a failure is reused (RetryAfterFailure, at most healthTTL)
	timeout   time.Duration
	now       func() time.Time

	probeMu sync.Mutex // one round trip at a time; the others wait for its result

	mu      sync.Mutex
	version uint32 // newest key version seen (Status round trip or Encrypt)
	last    health // what the last round trip (or a refused call) said
	// keyID is KeyID(key, keyIDVersion), the last one Encrypt answered
	// (built once a version, not on every call).
	keyID        string
	keyIDVersion uint32
}

// health is what the plugin last learned of the authority: reused by
// Status, a success for the health TTL and a failure for
// RetryAfterFailure, so that however often the apiserver asks, Status
// calls the authority at most once per TTL while it answers and about
// once a second while it does not.
type health struct {
	at      time.Time // when it was learned (zero: nothing to reuse)
	cred    string    // the credential the calls rode on (Ready), "" if none
	healthz string    // "ok" or the reason
}

// Ready is implemented by an Authority whose calls ride on a credential of
// the plugin's own that can run out (the mTLS mode's X509-SVID). Status
// asks it first, at no cost to the authority: a plugin that knows it
// cannot be served says so at once, whatever it learned before.
type Ready interface {
	// Ready returns an error (an *SVIDError) when no call can succeed now,
	// else a token naming the credential calls ride on; a new token (a
	// renewed SVID) ends whatever Status learned with the old one.
	Ready() (string, error)
}

// Option configures New.
type Option func(*Plugin)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(p *Plugin) { p.now = now } }

// WithRetryAfterFailure replaces RetryAfterFailure (tests that must see a
// failure reused for longer than a loaded machine may take between calls).
func WithRetryAfterFailure(d time.Duration) Option { return func(p *Plugin) { p.failTTL = d } }

// New returns the plugin for cfg (validated by ParseConfig) over auth.
func New(cfg *Config, auth Authority, opts ...Option) *Plugin {
	p := &Plugin{
		auth: auth, key: cfg.Key,
		encCtx:    map[string]string{ContextKey: cfg.Cluster},
		healthTTL: time.Duration(cfg.HealthTTL), timeout: time.Duration(cfg.Timeout),
		now: time.Now,
	}
	if p.healthTTL <= 0 {
		p.healthTTL = DefaultHealthTTL
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	p.failTTL = RetryAfterFailure
	for _, o := range opts {
		o(p)
	}
	p.failTTL = min(p.failTTL, p.healthTTL)
	return p
}

// KeyID is the key_id of version v of key: "ward:<key>:<v>".
func KeyID(key string, v uint32) string {
	return KeyIDPrefix + key + ":" + strconv.FormatUint(uint64(v), 10)
}

// ParseKeyID splits a key_id made by KeyID. It never panics.
func ParseKeyID(id string) (key string, v uint32, err error) {
	rest, ok := strings.CutPrefix(id, KeyIDPrefix)
	if !ok {
		return "", 0, fmt.Errorf("key_id %.64q was not made by ward's plugin (it starts with %q)", id, KeyIDPrefix)
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("key_id %.64q has no version", id)
	}
	key, vs := rest[:i], rest[i+1:]
	if err := kmsfmt.ValidateKeyName(key); err != nil {
		return "", 0, fmt.Errorf("key_id %.64q: %v", id, err)
	}
	n, err := strconv.ParseUint(vs, 10, 32)
	if err != nil || n == 0 || vs[0] == '0' {
		return "", 0, fmt.Errorf("key_id %.64q: version %.16q is not a positive number", id, vs)
	}
	return key, uint32(n), nil
}

// Status reports "ok" only after a real encrypt/decrypt round trip through
// the authority, else the reason; key_id names the key's newest version,
// so a rotation changes it and the apiserver makes a new DEK seed. A good
// round trip is reused for the health TTL; a failed one only for
// RetryAfterFailure, so a blip clears at the first Status a second later
// while an authority that stays down is asked about once a second,
// however often Status is polled (concurrent callers wait for the round
// trip in flight). It says not-ok sooner when the plugin knows it cannot
// be served: no valid SVID (expired, or none from the agent: checked on
// every Status, locally), or an Encrypt or Decrypt of the apiserver's
// refused (the plugin's identity denied or unauthenticated, the TLS
// handshake failed, the authority sealed, the key gone). An unhealthy
// Status carries no key_id: the apiserver extends its write seed's
// 3-minute expiry on every Status whose key_id matches, healthy or not,
// so a key_id kept while the authority is sealed let it write under the
// cached seed for as long as the seal lasted
// (TestKMSPluginSealedBeyondWriteTTL); without it, writes stop 3 minutes
// after the last healthy Status, as KMS v2 bounds them.
func (p *Plugin) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	healthz, v := p.Health(ctx)
	r := &kmsapi.StatusResponse{Version: APIVersion, Healthz: healthz}
	if v > 0 && healthz == "ok" {
		r.KeyId = KeyID(p.key, v)
	}
	return r, nil
}

// Health returns "ok" or the reason the plugin is not healthy, and the
// newest key version known (0: none yet). It makes at most one round trip
// per health TTL while they succeed and one per RetryAfterFailure while
// they fail (concurrent callers wait for the one in flight), more only
// when a key version or the plugin's SVID changed since.
func (p *Plugin) Health(ctx context.Context) (string, uint32) {
	cred, err := p.ready()
	if err != nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		return Reason(err), p.version
	}
	if healthz, v, ok := p.cached(cred); ok {
		return healthz, v
	}
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	if healthz, v, ok := p.cached(cred); ok { // another caller probed while we waited
		return healthz, v
	}
	// The round trip outlives a caller that gives up: its result is what
	// the next callers within the TTL get.
	healthz := "ok"
	if err := p.roundTrip(context.WithoutCancel(ctx)); err != nil {
		healthz = Reason(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = health{at: p.now(), cred: cred, healthz: healthz}
	return healthz, p.version
}

// ready is the authority's local check (Ready), if it has one.
func (p *Plugin) ready() (string, error) {
	if r, ok := p.auth.(Ready); ok {
		return r.Ready()
	}
	return "", nil
}

// cached returns what Status learned last if it is still to be reused: with
// the same credential, a success within the health TTL, a failure within
// RetryAfterFailure.
func (p *Plugin) cached(cred string) (string, uint32, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ttl := p.healthTTL
	if p.last.healthz != "ok" {
		ttl = p.failTTL
	}
	if p.last.at.IsZero() || p.last.cred != cred || p.now().Sub(p.last.at) >= ttl {
		return "", 0, false
	}
	return p.last.healthz, p.version, true
}

// refused records a call of the apiserver's that says the plugin cannot be
// served now (cannotServe): Status reports it, without asking the
// authority, until RetryAfterFailure has passed (then its own round trip
// tells) or the plugin's SVID changed. A Decrypt's
// PermissionDenied is not taken as such: the authority answers that too
// for a ciphertext that fails authentication, and what Decrypt carries
// comes from etcd, not from the plugin, so one altered object (read again
// on every list) would keep Status not-ok, and the apiserver off the
// plugin, for every object; Status's own round trip finds out within the
// TTL whether the plugin's identity is denied.
//
// An Encrypt's NotFound is taken as such: Encrypt names only the plugin's
// key, so the key is gone for every call (a Decrypt's NotFound names a
// version of one ciphertext).
func (p *Plugin) refused(err error, decrypt bool) {
	keyGone := !decrypt && causeOf(err) == causeNotFound
	if !keyGone && (!cannotServe(err) || (decrypt && status.Code(err) == codes.PermissionDenied)) {
		return
	}
	cred, _ := p.ready()
	p.mu.Lock()
	p.last = health{at: p.now(), cred: cred, healthz: Reason(err)}
	p.mu.Unlock()
}

// roundTrip seals a random probe under the key and opens it again.
func (p *Plugin) roundTrip(ctx context.Context) error {
	probe := make([]byte, 32)
	rand.Read(probe)
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	ct, v, err := p.auth.Encrypt(ctx, p.key, probe, p.encCtx)
	if err != nil {
		return err
	}
	p.saw(v)
	pt, err := p.auth.Decrypt(ctx, ct, p.encCtx)
	if err != nil {
		return err
	}
	if string(pt) != string(probe) {
		return errors.New("the authority's round trip returned other bytes than were sealed")
	}
	return nil
}

// saw records a key version the authority used (versions only grow) and
// returns its key_id.
func (p *Plugin) saw(v uint32) (keyID string) {
	p.mu.Lock()
	if v > p.version {
		p.version = v
		p.last.at = time.Time{} // Status re-probes and reports the new key_id
	}
	if p.keyID == "" || p.keyIDVersion != v {
		p.keyID, p.keyIDVersion = KeyID(p.key, v), v
	}
	keyID = p.keyID
	p.mu.Unlock()
	return keyID
}

// Reason turns an authority error into the healthz text: a short cause
// ("authority sealed", "authority unreachable", "key disabled", "no valid
// SVID", ...) followed by the authority's own message.
func Reason(err error) string {
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Message()
	}
	return causeOf(err) + ": " + msg
}

// The causes Reason names.
const (
	causeNoSVID      = "no valid SVID"
	causeHandshake   = "TLS handshake with the authority failed"
	causeSealed      = "authority sealed"
	causeUnreachable = "authority unreachable"
	causeNotFound    = "key not found"
	causeDenied      = "denied by the authority"
	causeDisabled    = "key disabled"
	causeOther       = "round trip failed"
)

func causeOf(err error) string {
	code := status.Code(err)
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Message()
	}
	low := strings.ToLower(msg)
	var svidErr *SVIDError
	switch {
	case errors.As(err, &svidErr):
		return causeNoSVID
	case strings.Contains(low, "authentication handshake failed"):
		// mTLS mode: the server's SVID is not the configured server_id
		// (or not of the bundle), or it refused the plugin's.
		return causeHandshake
	case code == codes.FailedPrecondition && strings.Contains(low, "authority is sealed"):
		// The authority's own words (server.errSealed), not any message
		// with "sealed" in it: a key named "sealed-secrets" in a
		// disabled-version error is not a sealed authority.
		return causeSealed
	case code == codes.Unavailable || code == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		return causeUnreachable
	case code == codes.NotFound:
		return causeNotFound
	case code == codes.PermissionDenied || code == codes.Unauthenticated:
		return causeDenied
	case strings.Contains(low, "disabled") || strings.Contains(low, "destroyed"):
		return causeDisabled
	}
	return causeOther
}

// cannotServe says whether a failed call means no call of the plugin's can
// succeed now, whatever it carries: its identity refused or missing, the
// authority not the one configured, or sealed. An unreachable authority is
// not among them (one call may time out while the next goes through, and
// Status finds out within the TTL), nor what concerns one object (a
// disabled key version, a ciphertext that does not open).
func cannotServe(err error) bool {
	switch causeOf(err) {
	case causeNoSVID, causeHandshake, causeSealed, causeDenied:
		return true
	}
	return false
}

// Encrypt wraps a DEK seed under the key's active version.
func (p *Plugin) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	if n := len(req.GetPlaintext()); n == 0 || n > MaxSeed {
		return nil, status.Errorf(codes.InvalidArgument, "plaintext is %d bytes: ward's plugin wraps DEK seeds of 1..%d bytes", n, MaxSeed)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	ct, v, err := p.auth.Encrypt(ctx, p.key, req.Plaintext, p.encCtx)
	if err != nil {
		p.refused(err, false)
		return nil, authError("encrypt", err)
	}
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: p.saw(v)}, nil
}

// Decrypt unwraps a DEK seed made by Encrypt under any version of the key
// still decryptable.
func (p *Plugin) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	if err := p.CheckDecrypt(req.GetCiphertext(), req.GetKeyId(), req.GetAnnotations()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	pt, err := p.auth.Decrypt(ctx, req.Ciphertext, p.encCtx)
	if err != nil {
		p.refused(err, true)
		return nil, authError("decrypt", err)
	}
	return &kmsapi.DecryptResponse{Plaintext: pt}, nil
}

// CheckDecrypt checks what the apiserver hands back before anything goes
// to the authority: a ward ciphertext under the plugin's key, a key_id
// that names the same key and version, and no annotations (ward writes
// none: the ciphertext's authenticated header says all it needs). It
// never panics on any input.
func (p *Plugin) CheckDecrypt(ct []byte, keyID string, annotations map[string][]byte) error {
	h, _, _, err := kmsfmt.Parse(ct)
	if err != nil {
		return fmt.Errorf("the stored DEK seed is not a ward ciphertext: %v", err)
	}
	if h.KeyName != p.key {
		return fmt.Errorf("the stored DEK seed was wrapped with ward key %q, not this plugin's %q", h.KeyName, p.key)
	}
	key, v, err := ParseKeyID(keyID)
	if err != nil {
		return err
	}
	if key != h.KeyName || v != h.Version {
		return fmt.Errorf("key_id %q does not match the ciphertext (key %q version %d)", keyID, h.KeyName, h.Version)
	}
	if len(annotations) > 0 {
		names := make([]string, 0, len(annotations))
		for k := range annotations {
			names = append(names, fmt.Sprintf("%.64q", k))
		}
		return fmt.Errorf("annotations %s: ward's plugin writes none, so this object was not written by it", strings.Join(names, ", "))
	}
	return nil
}

// authError keeps the authority's gRPC code and says which call failed.
func authError(op string, err error) error {
	s, ok := status.FromError(err)
	if !ok {
		code := codes.Unavailable
		if errors.Is(err, context.DeadlineExceeded) {
			code = codes.DeadlineExceeded
		}
		return status.Errorf(code, "ward %s: %v", op, err)
	}
	return status.Errorf(s.Code(), "ward %s: %s", op, s.Message())
}
