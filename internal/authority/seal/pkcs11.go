package seal

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/shared/errs"
)

// TypePKCS11 is the PKCS#11 HSM seal.
const TypePKCS11 = "pkcs11"

// pkcs11AAD binds the wrapped root key to its purpose.
const pkcs11AAD = "ward pkcs11 seal v1 root key"

// DefaultPKCS11KeyLabel labels the seal's wrapping key in the token when
// the configuration names none.
const DefaultPKCS11KeyLabel = "ward-seal"

// ErrPKCS11 wraps the PKCS#11 seal's own errors.
var ErrPKCS11 = errs.New(errs.Unavailable, "PKCS#11 seal")

// PKCS11Config configures the PKCS#11 seal.
type PKCS11Config struct {
	Token hsm.Config
	// KeyLabel labels the AES-256 wrapping key in the token; it is
	// generated there at init if the token holds none with that label.
	KeyLabel string
}

// PKCS11Seal wraps the root key with AES-256-GCM under a key generated in
// and never leaving a PKCS#11 HSM (sensitive, not extractable), and
// unseals automatically while the HSM is reachable. At init it can also
// split the root key into recovery shares (RecoverySeal): a quorum of them
// unseals the authority when the HSM is lost.
//
// The token is opened (module loaded, PIN read and logged in) on first
// use, not when the seal is made, so an authority whose HSM is missing
// still starts, sealed, and takes recovery shares. Once open it stays
// open: the KMS keeps hardware-backed keys in the same token (Token).
type PKCS11Seal struct {
	cfg PKCS11Config

	mu  sync.Mutex
	tok *hsm.Token
}

var _ RecoverySeal = (*PKCS11Seal)(nil)

// NewPKCS11 returns a PKCS#11 seal. It does not touch the HSM yet.
func NewPKCS11(cfg PKCS11Config) *PKCS11Seal {
	if cfg.KeyLabel == "" {
		cfg.KeyLabel = DefaultPKCS11KeyLabel
	}
	return &PKCS11Seal{cfg: cfg}
}

// Type returns TypePKCS11.
func (*PKCS11Seal) Type() string { return TypePKCS11 }

// Token opens the token if needed and returns it.
func (p *PKCS11Seal) Token() (*hsm.Token, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tok != nil {
		return p.tok, nil
	}
	tok, err := hsm.Open(p.cfg.Token)
	if err != nil {
		return nil, err
	}
	p.tok = tok
	return tok, nil
}

// Close closes the token, if open.
func (p *PKCS11Seal) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tok == nil {
		return nil
	}
	err := p.tok.Close()
	p.tok = nil
	return err
}

// Init wraps rootKey in the HSM, generating the wrapping key there if the
// token has none labelled KeyLabel, and, if opts asks for shares, splits
// rootKey into recovery shares.
func (p *PKCS11Seal) Init(ctx context.Context, rootKey []byte, opts InitOptions) (Config, [][]byte, error) {
	tok, err := p.Token()
	if err != nil {
		return Config{}, nil, err
	}
	key, err := tok.Key(p.cfg.KeyLabel)
	if err != nil {
		if gerr := tok.GenerateKey(p.cfg.KeyLabel); gerr != nil {
			return Config{}, nil, fmt.Errorf("%w: generating the wrapping key %q: %v", ErrPKCS11, p.cfg.KeyLabel, gerr)
		}
		if key, err = tok.Key(p.cfg.KeyLabel); err != nil {
			return Config{}, nil, err
		}
	}
	wrapped, err := key.Seal(rootKey, []byte(pkcs11AAD))
	if err != nil {
		return Config{}, nil, fmt.Errorf("%w: wrapping the root key: %v", ErrPKCS11, err)
	}
	cfg := Config{Wrapped: wrapped, Params: map[string]string{"key_label": p.cfg.KeyLabel}}
	if opts.Shares == 0 && opts.Threshold == 0 {
		return cfg, nil, nil
	}
	_, shares, err := ShamirSeal{}.Init(ctx, rootKey, opts)
	if err != nil {
		return Config{}, nil, err
	}
	return cfg, shares, nil
}

// Unwrap recovers the root key in the HSM.
func (p *PKCS11Seal) Unwrap(_ context.Context, cfg Config) ([]byte, error) {
	if label := cfg.Params["key_label"]; label != p.cfg.KeyLabel {
		return nil, fmt.Errorf("%w: the authority was initialised with the wrapping key labelled %q, but seal.pkcs11.key_label is %q; configure %q", ErrPKCS11, label, p.cfg.KeyLabel, label)
	}
	if len(cfg.Wrapped) == 0 {
		return nil, fmt.Errorf("%w: the stored configuration at %s holds no wrapped root key; it is corrupt", ErrBadConfig, ConfigKey)
	}
	tok, err := p.Token()
	if err != nil {
		return nil, err
	}
	key, err := tok.Key(p.cfg.KeyLabel)
	if err != nil {
		return nil, fmt.Errorf("%w: %v; if the key is lost for good, unseal with the recovery shares", ErrPKCS11, err)
	}
	root, err := key.Open(cfg.Wrapped, []byte(pkcs11AAD))
	if errors.Is(err, hsm.ErrAuth) {
		return nil, fmt.Errorf("%w: the HSM key %q does not open the root key wrapped at init: it is another key with the same label (another token?), or %s was altered", ErrPKCS11, p.cfg.KeyLabel, ConfigKey)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: unwrapping the root key: %v", ErrPKCS11, err)
	}
	return root, nil
}

// Combine recovers the root key from recovery shares.
func (p *PKCS11Seal) Combine(cfg Config, shares [][]byte) ([]byte, error) {
	return ShamirSeal{}.Combine(cfg, shares)
}
