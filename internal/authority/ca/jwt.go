package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTSVID is a signed JWT-SVID.
type JWTSVID struct {
	Token    string
	ID       spiffeid.ID
	Audience []string
	IssuedAt time.Time
	Expiry   time.Time
	KeyID    string
	// JTI is the token's jti claim: 128 random bits in hex, by which an
	// eviction of the agent it was minted through revokes it (the
	// deny-list's serials, until Expiry).
	JTI string
}

// SignJWTSVID signs a JWT-SVID for id with the active JWT key (ES256 for
// P-256 keys, ES384 for P-384). ttl 0 means Config.JWTSVIDTTL; it is capped
// at Config.MaxJWTSVIDTTL and at the key's expiry. audience must be
// non-empty.
func (c *CA) SignJWTSVID(ctx context.Context, id spiffeid.ID, audience []string, ttl time.Duration) (JWTSVID, error) {
	if err := ctx.Err(); err != nil {
		return JWTSVID{}, err
	}
	if err := c.checkID(id); err != nil {
		return JWTSVID{}, err
	}
	if len(audience) == 0 {
		return JWTSVID{}, fmt.Errorf("%w: JWT-SVID for %s needs at least one audience", ErrInvalidRequest, id)
	}
	for _, a := range audience {
		if a == "" {
			return JWTSVID{}, fmt.Errorf("%w: JWT-SVID for %s has an empty audience", ErrInvalidRequest, id)
		}
	}
	v := c.view.Load()
	if v.jwt == nil {
		return JWTSVID{}, ErrNotInitialized
	}
	now := c.clock()
	if ttl <= 0 {
		ttl = c.cfg.JWTSVIDTTL
	}
	ttl = min(ttl, c.cfg.MaxJWTSVIDTTL)
	exp := minTime(now.Add(ttl), v.jwt.NotAfter)
	if !exp.After(now) {
		return JWTSVID{}, fmt.Errorf("active JWT key %s of %q has expired; run Tick or Rotate", v.jwt.ID, c.cfg.TrustDomain)
	}
	alg := jose.ES256
	if k, ok := v.jwt.signer.(*ecdsa.PrivateKey); ok && k.Curve.Params().BitSize == 384 {
		alg = jose.ES384
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: v.jwt.signer, KeyID: v.jwt.ID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return JWTSVID{}, fmt.Errorf("JWT signer for key %s: %w", v.jwt.ID, err)
	}
	iat := now.Truncate(time.Second)
	var jti [16]byte
	rand.Read(jti[:])
	claims := jwt.Claims{
		ID:       hex.EncodeToString(jti[:]),
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(iat),
	}
	c.jwtSigned.Add(1)
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		return JWTSVID{}, fmt.Errorf("sign JWT-SVID for %s: %w", id, err)
	}
	return JWTSVID{Token: tok, ID: id, Audience: append([]string(nil), audience...), IssuedAt: iat,
		Expiry: exp.Truncate(time.Second), KeyID: v.jwt.ID, JTI: claims.ID}, nil
}

// SignedJWTSVIDs is how many JWT-SVIDs this CA has signed (attempted: each
// is a private-key signature) since it was opened.
func (c *CA) SignedJWTSVIDs() uint64 { return c.jwtSigned.Load() }
