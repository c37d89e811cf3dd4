// Package seal protects ward's root key and runs the seal lifecycle:
// initialise (create the root key, the barrier keyring and the seal
// configuration in one atomic write), unseal (quorum of operator shares or
// automatically from a key the process can reach) and seal.
//
// Seals plug in through the Seal interface: a ShareSeal hands shares to
// operators at init (the Shamir seal), an AutoSeal recovers the root key by
// itself (the key-file seal for development; a PKCS#11 HSM seal can be added
// the same way). The non-secret seal configuration lives in the raw store at
// ConfigKey, next to the barrier's keyring.
package seal

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"github.com/wardproject/ward/internal/authority/shamir"
	"github.com/wardproject/ward/internal/shared/errs"
)

// ConfigKey is where the seal configuration is stored (not secret).
const ConfigKey = "core/seal-config"

// Seal type names, stored in Config.Type.
const (
	TypeShamir  = "shamir"
	TypeKeyFile = "keyfile"
)

// Seal protects a root key.
type Seal interface {
	// Type names the seal; it is stored in the configuration and must
	// match when the authority restarts.
	Type() string
	// Init protects a fresh root key. It returns the non-secret
	// configuration to store (the Manager fills Version, Type, Shares,
	// Threshold and ShareHashes) and, for a ShareSeal, the shares to hand
	// to operators once. It must not keep rootKey.
	Init(ctx context.Context, rootKey []byte, opts InitOptions) (Config, [][]byte, error)
}

// ShareSeal is a seal unsealed by a quorum of operator shares.
type ShareSeal interface {
	Seal
	// Combine recovers the root key from cfg.Threshold distinct shares,
	// each already checked against cfg.ShareHashes.
	Combine(cfg Config, shares [][]byte) ([]byte, error)
}

// AutoSeal is a seal that recovers the root key without operators.
type AutoSeal interface {
	Seal
	// Unwrap recovers the root key protected by Init.
	Unwrap(ctx context.Context, cfg Config) ([]byte, error)
}

// InitOptions configures Manager.Init. Shares and Threshold apply to share
// seals (2 <= Threshold <= Shares <= 255) and must be zero for auto seals.
type InitOptions struct {
	Shares    int
	Threshold int
}

// InitResult is returned by Manager.Init once; the shares are stored
// nowhere. Hand each one to a different operator.
type InitResult struct {
	Shares [][]byte
}

// Encoded returns the shares in their human form (EncodeShare).
func (r InitResult) Encoded() []string {
	out := make([]string, len(r.Shares))
	for i, s := range r.Shares {
		out[i] = EncodeShare(s)
	}
	return out
}

// Config is the stored seal configuration. It holds nothing secret: share
// hashes are SHA-256 of high-entropy shares, and Wrapped is the root key
// encrypted under the seal's key.
type Config struct {
	Version   int    `json:"version"`
	Type      string `json:"type"`
	Shares    int    `json:"shares,omitempty"`
	Threshold int    `json:"threshold,omitempty"`
	// ShareHashes are hex SHA-256 digests of the shares, in share order,
	// so a wrong share is rejected when submitted.
	ShareHashes []string `json:"share_hashes,omitempty"`
	// Wrapped is the root key protected by an auto seal.
	Wrapped []byte `json:"wrapped,omitempty"`
	// Params holds seal-specific non-secret settings (e.g. an HSM key
	// label).
	Params map[string]string `json:"params,omitempty"`
}

// Errors; returned errors wrap them for errors.Is.
var (
	ErrNotInitialized     = errs.New(errs.Precondition, "the authority is not initialised; run init first")
	ErrAlreadyInitialized = errs.New(errs.Precondition, "the authority is already initialised; nothing was changed")
	ErrAlreadyUnsealed    = errs.New(errs.Precondition, "the authority is already unsealed; nothing to do")
	ErrBadShareEncoding   = errs.New(errs.Invalid, "the share is not valid hex as printed at init; check for copy errors")
	ErrUnknownShare       = errs.New(errs.Invalid, "the share is not one of the shares created at init; check for typos or a share from another authority")
	ErrRepeatedShare      = errs.New(errs.Invalid, "this share was already submitted in this unseal attempt; submit a different operator's share")
	ErrKeyringMismatch    = errs.New(errs.Invalid, "the recovered root key does not open the barrier keyring; the keyring and the seal configuration come from different initialisations (for example a partial restore)")
	ErrSealMismatch       = errs.New(errs.Internal, "the configured seal type does not match the one the authority was initialised with")
	ErrNotShareSeal       = errs.New(errs.Internal, "this seal unseals automatically and takes no shares; use auto-unseal")
	ErrNotAutoSeal        = errs.New(errs.Internal, "this seal needs operator shares to unseal; submit shares")
	ErrBadOptions         = errs.New(errs.Invalid, "invalid init options")
	ErrBadConfig          = errs.New(errs.Internal, "the stored seal configuration at "+ConfigKey+" is invalid")
)

// EncodeShare returns a share as lowercase hex, the form printed to
// operators at init.
func EncodeShare(share []byte) string { return hex.EncodeToString(share) }

// maxEncodedShare bounds DecodeShare's input (a 32-byte key gives 66).
const maxEncodedShare = 1024

// DecodeShare parses a share printed by EncodeShare. Whitespace anywhere
// (line breaks from copying) is ignored and hex digits may be in either
// case. Errors never repeat the input, which is secret.
func DecodeShare(s string) ([]byte, error) {
	if len(s) > maxEncodedShare {
		return nil, fmt.Errorf("%w (%d characters is far longer than a share)", ErrBadShareEncoding, len(s))
	}
	clean := strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
	if clean == "" {
		return nil, fmt.Errorf("%w (it is empty)", ErrBadShareEncoding)
	}
	if len(clean)%2 != 0 {
		return nil, fmt.Errorf("%w (odd number of hex digits: one is missing or extra)", ErrBadShareEncoding)
	}
	out, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("%w (it contains characters other than 0-9 and a-f)", ErrBadShareEncoding)
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%w (%d byte(s) is too short for a share)", ErrBadShareEncoding, len(out))
	}
	return out, nil
}

// ParseConfig decodes and validates a stored configuration.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrBadConfig, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadConfig)
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c Config) validate() error {
	if c.Version != 1 {
		return fmt.Errorf("%w: version %d, this ward understands 1", ErrBadConfig, c.Version)
	}
	if c.Type == "" {
		return fmt.Errorf("%w: no seal type", ErrBadConfig)
	}
	if c.Shares == 0 && c.Threshold == 0 && len(c.ShareHashes) == 0 {
		return nil
	}
	if c.Threshold < 2 || c.Threshold > c.Shares || c.Shares > shamir.MaxShares {
		return fmt.Errorf("%w: threshold %d of %d shares is out of range", ErrBadConfig, c.Threshold, c.Shares)
	}
	if len(c.ShareHashes) != c.Shares {
		return fmt.Errorf("%w: %d share hashes for %d shares", ErrBadConfig, len(c.ShareHashes), c.Shares)
	}
	seen := make(map[string]bool, len(c.ShareHashes))
	for i, h := range c.ShareHashes {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 || h != strings.ToLower(h) {
			return fmt.Errorf("%w: share hash %d is not 64 lowercase hex digits", ErrBadConfig, i+1)
		}
		if seen[h] {
			return fmt.Errorf("%w: share hash %d repeats an earlier one", ErrBadConfig, i+1)
		}
		seen[h] = true
	}
	return nil
}
