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
	timeout   time.Duration
	now       func() time.Time

	probeMu sync.Mutex // one round trip at a time; the others wait for its result

	mu        sync.Mutex
	version   uint32    // newest key version seen (Status round trip or Encrypt)
	checkedAt time.Time // when the last good round trip ended (zero: none cached)
}

// Option configures New.
type Option func(*Plugin)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(p *Plugin) { p.now = now } }

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
	for _, o := range opts {
		o(p)
	}
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
// the authority (reused for the health TTL), else the reason; key_id names
// the key's newest version, so a rotation changes it and the apiserver
// makes a new DEK seed. An unhealthy Status carries no key_id: the
// apiserver extends its write seed's 3-minute expiry on every Status whose
// key_id matches, healthy or not, so a key_id kept while the authority is
// sealed let it write under the cached seed for as long as the seal lasted
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
// newest key version known (0: none yet).
func (p *Plugin) Health(ctx context.Context) (string, uint32) {
	if v, ok := p.cached(); ok {
		return "ok", v
	}
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	if v, ok := p.cached(); ok { // another caller probed while we waited
		return "ok", v
	}
	err := p.roundTrip(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.checkedAt = time.Time{}
		return Reason(err), p.version
	}
	p.checkedAt = p.now()
	return "ok", p.version
}

func (p *Plugin) cached() (uint32, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.checkedAt.IsZero() || p.now().Sub(p.checkedAt) >= p.healthTTL {
		return 0, false
	}
	return p.version, true
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

// saw records a key version the authority used; versions only grow.
func (p *Plugin) saw(v uint32) {
	p.mu.Lock()
	if v > p.version {
		p.version = v
		p.checkedAt = time.Time{} // Status re-probes and reports the new key_id
	}
	p.mu.Unlock()
}

// Reason turns an authority error into the healthz text: a short cause
// ("authority sealed", "authority unreachable", "key disabled", "no valid
// SVID", ...)
// followed by the authority's own message.
func Reason(err error) string {
	code := status.Code(err)
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Message()
	}
	low := strings.ToLower(msg)
	var cause string
	var svidErr *SVIDError
	switch {
	case errors.As(err, &svidErr):
		cause = "no valid SVID"
	case strings.Contains(low, "authentication handshake failed"):
		// mTLS mode: the server's SVID is not the configured server_id
		// (or not of the bundle), or it refused the plugin's.
		cause = "TLS handshake with the authority failed"
	case strings.Contains(low, "sealed"):
		cause = "authority sealed"
	case code == codes.Unavailable || code == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		cause = "authority unreachable"
	case code == codes.NotFound:
		cause = "key not found"
	case code == codes.PermissionDenied || code == codes.Unauthenticated:
		cause = "denied by the authority"
	case strings.Contains(low, "disabled") || strings.Contains(low, "destroyed"):
		cause = "key disabled"
	default:
		cause = "round trip failed"
	}
	return cause + ": " + msg
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
		return nil, authError("encrypt", err)
	}
	p.saw(v)
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: KeyID(p.key, v)}, nil
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
