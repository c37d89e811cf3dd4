// Package shamir splits a secret into shares so that any threshold of them
// recover it and fewer reveal nothing (Shamir's secret sharing over GF(2^8),
// byte by byte, with the AES reduction polynomial x^8+x^4+x^3+x+1).
//
// It is written here by hand because no well-kept, permissively licensed
// module provides it (HashiCorp's implementation lives inside Vault's
// BUSL-licensed main module). It is deliberately small and careful:
//
//   - polynomial coefficients come from crypto/rand;
//   - field arithmetic is constant-time: multiplication is a fixed
//     eight-round shift-and-add with masks, inversion is a fixed
//     exponentiation a^254; there are no lookup tables indexed by secret
//     bytes and no branches on secret values (only on the public x
//     coordinates and lengths);
//   - each share is the polynomial evaluations followed by one byte holding
//     its x coordinate (1..255, never 0, which would be the secret itself).
//
// Threshold 1 is refused: a 1-of-n "share" would be a copy of the secret,
// which is not a split at all. Use 2 <= threshold <= shares <= 255.
package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
)

// MaxShares is the largest number of shares (x coordinates are 1..255).
const MaxShares = 255

// Sentinel errors, wrapped with details by Split and Combine.
var (
	// ErrParams: shares/threshold/secret outside the allowed range.
	ErrParams = errors.New("shamir: invalid parameters")
	// ErrShares: the shares given to Combine cannot be combined.
	ErrShares = errors.New("shamir: invalid shares")
)

// mul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1 in constant time.
func mul(a, b byte) byte {
	var r byte
	for i := 0; i < 8; i++ {
		r ^= -(b & 1) & a // add a when the low bit of b is set
		b >>= 1
		hi := -(a >> 7)            // 0xff when a's top bit is set
		a = (a << 1) ^ (0x1b & hi) // multiply a by x, reduce
	}
	return r
}

// inv returns the multiplicative inverse of a (a^254; inv(0) = 0) in
// constant time.
func inv(a byte) byte {
	// 254 = 0b11111110: a^254 = a^2 * a^4 * ... * a^128.
	sq := mul(a, a) // a^2
	r := sq
	for i := 0; i < 6; i++ {
		sq = mul(sq, sq) // a^4 .. a^128
		r = mul(r, sq)
	}
	return r
}

// Split divides secret into shares shares, any threshold of which recover
// it with Combine. Each share is len(secret)+1 bytes; the last byte is its
// x coordinate. Shares have x coordinates 1..shares in order.
func Split(secret []byte, shares, threshold int) ([][]byte, error) {
	switch {
	case len(secret) == 0:
		return nil, fmt.Errorf("%w: the secret is empty; give at least one byte", ErrParams)
	case threshold < 2:
		return nil, fmt.Errorf("%w: threshold %d is below 2; a 1-of-n share would be a copy of the secret", ErrParams, threshold)
	case shares < threshold:
		return nil, fmt.Errorf("%w: %d shares cannot meet threshold %d; use shares >= threshold", ErrParams, shares, threshold)
	case shares > MaxShares:
		return nil, fmt.Errorf("%w: %d shares exceeds the maximum of %d", ErrParams, shares, MaxShares)
	}
	// coeffs[i*(threshold-1)+k] is coefficient k+1 of byte i's polynomial;
	// coefficient 0 is the secret byte.
	deg := threshold - 1
	coeffs := make([]byte, len(secret)*deg)
	if _, err := rand.Read(coeffs); err != nil {
		return nil, fmt.Errorf("shamir: reading random coefficients: %w", err)
	}
	defer clear(coeffs)
	out := make([][]byte, shares)
	for s := range out {
		x := byte(s + 1)
		share := make([]byte, len(secret)+1)
		for i, secretByte := range secret {
			c := coeffs[i*deg : (i+1)*deg]
			// Horner: ((c[deg-1]*x + c[deg-2])*x + ... + c[0])*x + secret
			var y byte
			for k := deg - 1; k >= 0; k-- {
				y = mul(y, x) ^ c[k]
			}
			share[i] = mul(y, x) ^ secretByte
		}
		share[len(secret)] = x
		out[s] = share
	}
	return out, nil
}

// Combine recovers the secret from at least threshold distinct shares made
// by one Split. Given fewer than threshold shares (but at least two) it
// returns a value unrelated to the secret without error: Shamir shares carry
// no integrity check, so callers must verify the result (ward's seal checks
// each share against a hash recorded at init and the combined key against
// the keyring). Errors: fewer than two shares, shares of different lengths,
// an x coordinate of 0, or two shares with the same x coordinate.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("%w: got %d share(s), need at least 2", ErrShares, len(shares))
	}
	if len(shares) > MaxShares {
		return nil, fmt.Errorf("%w: got %d shares, more than the %d that can exist", ErrShares, len(shares), MaxShares)
	}
	n := len(shares[0])
	if n < 2 {
		return nil, fmt.Errorf("%w: share 1 is %d byte(s), a share is at least 2 (one secret byte and its x coordinate)", ErrShares, n)
	}
	xs := make([]byte, len(shares))
	var seen [256]bool
	for i, s := range shares {
		if len(s) != n {
			return nil, fmt.Errorf("%w: share %d is %d bytes but share 1 is %d; shares of one split have equal length", ErrShares, i+1, len(s), n)
		}
		x := s[n-1]
		if x == 0 {
			return nil, fmt.Errorf("%w: share %d has x coordinate 0, which no share has; it is corrupt", ErrShares, i+1)
		}
		if seen[x] {
			return nil, fmt.Errorf("%w: share %d repeats x coordinate %d; give each share once", ErrShares, i+1, x)
		}
		seen[x] = true
		xs[i] = x
	}
	// Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); in
	// GF(2^8) subtraction is XOR. Depends only on public x coordinates.
	basis := make([]byte, len(shares))
	for i, xi := range xs {
		num, den := byte(1), byte(1)
		for j, xj := range xs {
			if i == j {
				continue
			}
			num = mul(num, xj)
			den = mul(den, xj^xi)
		}
		basis[i] = mul(num, inv(den))
	}
	secret := make([]byte, n-1)
	for b := range secret {
		var acc byte
		for i, s := range shares {
			acc ^= mul(s[b], basis[i])
		}
		secret[b] = acc
	}
	return secret, nil
}
