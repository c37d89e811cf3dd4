package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// maxJWTCache bounds the JWT-SVID cache; beyond it expired tokens are
// dropped first, then everything.
const maxJWTCache = 10000

// jwtCache keeps minted JWT-SVIDs per (SPIFFE ID, audience set) and reuses
// one until half its lifetime has passed. While the authority cannot be
// reached, a cached token that has not expired is still handed out.
type jwtCache struct {
	mu     sync.Mutex
	tokens map[string]jwtToken
}

type jwtToken struct {
	token           string
	issued, refresh time.Time
	expires         time.Time
}

func jwtKey(id spiffeid.ID, audience []string) string {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	aud = slices.Compact(aud)
	return id.String() + "\x00" + strings.Join(aud, "\x00")
}

func (c *jwtCache) get(key string, now time.Time) (jwtToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tokens[key]
	return t, ok
}

func (c *jwtCache) put(key string, t jwtToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = map[string]jwtToken{}
	}
	if len(c.tokens) >= maxJWTCache {
		for k, v := range c.tokens {
			if !now.Before(v.expires) {
				delete(c.tokens, k)
			}
		}
		if len(c.tokens) >= maxJWTCache {
			clear(c.tokens)
		}
	}
	c.tokens[key] = t
}

// drop forgets every cached token: after an eviction they are revoked
// (their jti on the deny-list), so none is handed out again, not even
// while the authority is away; the agent mints new ones once it attested
// again.
func (c *jwtCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.tokens)
}

func (c *jwtCache) mint(ctx context.Context, a *Agent, id spiffeid.ID, audience []string) (string, error) {
	key := jwtKey(id, audience)
	now := a.now()
	cached, ok := c.get(key, now)
	if ok && now.Before(cached.refresh) {
		return cached.token, nil
	}
	entryID := a.entryIDFor(id)
	if entryID == "" {
		return "", fmt.Errorf("no registration entry for %s", id)
	}
	if a.agentSVID.Load() == nil {
		if ok && now.Before(cached.expires) {
			return cached.token, nil
		}
		return "", fmt.Errorf("JWT-SVID for %s: the agent has no SVID (not attested or evicted)", id)
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := a.node().SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if status.Code(err) == codes.PermissionDenied {
		// The agent was evicted: every token minted through it is revoked,
		// the cached ones too; none is served again (step handles the
		// eviction at its next sync).
		c.drop()
		a.mu.Lock()
		a.dirty = true
		a.mu.Unlock()
		return "", fmt.Errorf("sign JWT-SVID for %s (entry %s): the authority refused this agent (evicted?): %w", id, entryID, err)
	}
	if err != nil {
		if ok && now.Before(cached.expires) {
			a.log.Warn("authority unreachable; serving a cached JWT-SVID", "spiffe_id", id.String(), "expires", cached.expires, "error", err)
			return cached.token, nil
		}
		return "", fmt.Errorf("sign JWT-SVID for %s (entry %s): %w", id, entryID, err)
	}
	exp := resp.GetExpires().AsTime()
	if resp.GetToken() == "" || !exp.After(now) {
		return "", fmt.Errorf("sign JWT-SVID for %s: the authority returned no token or an expired one", id)
	}
	t := jwtToken{token: resp.GetToken(), issued: now, expires: exp, refresh: now.Add(exp.Sub(now) / 2)}
	c.put(key, t, now)
	a.mu.Lock()
	a.dirty = true // kept in the cache: a restarted agent serves it while the authority is away
	a.mu.Unlock()
	return t.token, nil
}

// entryIDFor returns the ID of an entry for SPIFFE ID id (the lowest, for
// determinism), or "".
func (a *Agent) entryIDFor(id spiffeid.ID) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	best := ""
	for _, e := range a.byID[id] {
		if best == "" || e.id < best {
			best = e.id
		}
	}
	return best
}

// export returns the unexpired tokens for the disk cache.
func (c *jwtCache) export(now time.Time) []cachedJWT {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]cachedJWT, 0, len(c.tokens))
	for k, t := range c.tokens {
		if now.Before(t.expires) {
			out = append(out, cachedJWT{Key: k, Token: t.token, Issued: t.issued, Refresh: t.refresh, Expires: t.expires})
		}
	}
	return out
}

// load restores unexpired tokens from the disk cache.
func (c *jwtCache) load(js []cachedJWT, now time.Time) {
	for _, j := range js {
		if now.Before(j.Expires) && j.Token != "" && len(c.tokens) < maxJWTCache {
			c.put(j.Key, jwtToken{token: j.Token, issued: j.Issued, refresh: j.Refresh, expires: j.Expires}, now)
		}
	}
}
