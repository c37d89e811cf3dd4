package seal

import (
	"context"
	"fmt"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/shamir"
)

// ShamirSeal splits the root key itself into shares (Shamir over GF(2^8));
// any Threshold of them recover it. It keeps no state.
type ShamirSeal struct{}

var _ ShareSeal = ShamirSeal{}

// NewShamir returns the Shamir seal.
func NewShamir() ShamirSeal { return ShamirSeal{} }

// Type returns TypeShamir.
func (ShamirSeal) Type() string { return TypeShamir }

// Init splits rootKey into opts.Shares shares with threshold opts.Threshold.
func (ShamirSeal) Init(_ context.Context, rootKey []byte, opts InitOptions) (Config, [][]byte, error) {
	shares, err := shamir.Split(rootKey, opts.Shares, opts.Threshold)
	if err != nil {
		return Config{}, nil, fmt.Errorf("%w: %v", ErrBadOptions, err)
	}
	return Config{}, shares, nil
}

// Combine recovers the root key from cfg.Threshold shares.
func (ShamirSeal) Combine(cfg Config, shares [][]byte) ([]byte, error) {
	if len(shares) < cfg.Threshold {
		return nil, fmt.Errorf("%d shares given, threshold is %d", len(shares), cfg.Threshold)
	}
	key, err := shamir.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("combining shares: %w", err)
	}
	if len(key) != barrier.KeySize {
		clear(key)
		return nil, fmt.Errorf("shares combine to %d bytes, a root key is %d", len(key), barrier.KeySize)
	}
	return key, nil
}
