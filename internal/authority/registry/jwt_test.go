package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/wardproject/ward/internal/shared/errs"
)

// TestJWTRecordsBoundedAndTakenByEviction: the JWT-SVIDs minted through
// an agent are recorded (jti, exp) beside its X509-SVIDs without either
// dropping the other; an agent minting in a loop is refused past
// MaxJWTPerEntry unexpired ones per entry (the record does not grow),
// gets room again as they expire; an eviction hands every unexpired one
// to revoke (JWT set) with the X509-SVIDs, and refuses further mints.
func TestJWTRecordsBoundedAndTakenByEviction(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id, err := f.reg.RecordAttestation(ctx, spiffeid.RequireFromString("spiffe://example.org/ward/agent/jwt-node"), AttestJoinToken, nil, "a1", f.clk.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	agent := spiffeid.RequireFromString(id.SPIFFEID)
	other := spiffeid.RequireFromString("spiffe://example.org/ward/agent/other-node")
	if _, err := f.reg.RecordIssued(ctx, agent, []Issued{{Entry: "e1", Serial: "x1", NotAfter: f.clk.Now().Add(time.Hour)}}, false); err != nil {
		t.Fatal(err)
	}
	n := 0
	mint := func(a spiffeid.ID, entry string, ttl time.Duration) error {
		n++
		return f.reg.RecordJWT(ctx, a, entry, fmt.Sprintf("%032x", n), f.clk.Now().Add(ttl))
	}
	for i := range MaxJWTPerEntry {
		if err := mint(agent, "e1", 5*time.Minute); err != nil {
			t.Fatalf("mint %d within the bound: %v", i, err)
		}
	}
	// A loop past the bound: refused, and the record stays at the bound.
	for range 3 * MaxJWTPerEntry {
		if err := mint(agent, "e1", 5*time.Minute); errs.KindOf(err) != errs.Precondition {
			t.Fatalf("mint past the bound: %v, want Precondition", err)
		}
	}
	if got, _ := f.reg.IssuedJWTs(ctx, agent); len(got) != MaxJWTPerEntry {
		t.Fatalf("%d JWT-SVIDs recorded, want the bound %d", len(got), MaxJWTPerEntry)
	}
	// Another entry has its own bound; an X509 signing keeps the JWTs.
	if err := mint(agent, "e2", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	if perItem, err := f.reg.RecordIssued(ctx, agent, []Issued{{Entry: "e1", Serial: "x2", NotAfter: f.clk.Now().Add(time.Hour)}}, false); err != nil || perItem[0] != nil {
		t.Fatal(err, perItem)
	}
	if got, _ := f.reg.IssuedJWTs(ctx, agent); len(got) != MaxJWTPerEntry+1 {
		t.Fatalf("after an X509 signing: %d JWT-SVIDs recorded, want %d", len(got), MaxJWTPerEntry+1)
	}
	// Expired ones leave and make room.
	f.advance(6 * time.Minute)
	if err := mint(agent, "e1", 5*time.Minute); err != nil {
		t.Fatalf("mint after the others expired: %v", err)
	}
	if got, _ := f.reg.IssuedJWTs(ctx, agent); len(got) != 1 {
		t.Fatalf("%d JWT-SVIDs recorded after expiry, want 1", len(got))
	}
	live := fmt.Sprintf("%032x", n)
	if err := mint(other, "e1", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	var revoked []Issued
	if _, k, err := f.reg.EvictAgent(ctx, agent, func(_ context.Context, s []Issued) (int, error) { revoked = s; return len(s), nil }); err != nil || k != 3 {
		t.Fatalf("evict: %d %v", k, err)
	}
	if !slices.ContainsFunc(revoked, func(x Issued) bool { return x.JWT && x.Serial == live && x.Entry == "e1" }) ||
		slices.ContainsFunc(revoked, func(x Issued) bool { return x.JWT && x.Serial == fmt.Sprintf("%032x", n) }) {
		t.Fatalf("revoked %v: want the agent's unexpired JWT-SVID %s, not the other agent's", revoked, live)
	}
	if got, _ := f.reg.IssuedJWTs(ctx, agent); len(got) != 0 {
		t.Fatalf("revoked JWT-SVIDs still recorded: %v", got)
	}
	if err := mint(agent, "e1", 5*time.Minute); errs.KindOf(err) != errs.Denied {
		t.Fatalf("mint through an evicted agent: %v, want Denied", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range f.events {
		if ev.Operation == "agent.evict" && ev.Result == "ok" {
			if ev.Fields["revoked_svids"] != "2" || ev.Fields["revoked_jwt_svids"] != "1" {
				t.Fatalf("agent.evict fields %v", ev.Fields)
			}
			return
		}
	}
	t.Fatal("no agent.evict event")
}

// TestJWTJustPastExpRevokedByEviction (red team): the Workload API
// accepts a JWT-SVID for a minute past its exp (go-spiffe validates with
// go-jose's DefaultLeeway: checked here on a token 30 s past exp), so an
// eviction must revoke one whose exp passed less than that ago. Before,
// the record dropped it at exp and the eviction took only unexpired ones:
// a token taken off the evicted node 30 s past its exp was left off the
// deny-list and every ward agent still accepted it for half a minute.
func TestJWTJustPastExpRevokedByEviction(t *testing.T) {
	if JWTLeeway < jwt.DefaultLeeway {
		t.Fatalf("JWTLeeway %v is shorter than go-jose's DefaultLeeway %v, which ValidateJWTSVID accepts past exp", JWTLeeway, jwt.DefaultLeeway)
	}
	acceptedPastExp(t, 30*time.Second)

	f := newFixture(t)
	ctx := context.Background()
	id, err := f.reg.RecordAttestation(ctx, spiffeid.RequireFromString("spiffe://example.org/ward/agent/leeway-node"), AttestJoinToken, nil, "a1", f.clk.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	agent := spiffeid.RequireFromString(id.SPIFFEID)
	exp := f.clk.Now().Add(5 * time.Minute)
	if err := f.reg.RecordJWT(ctx, agent, "e1", "0123456789abcdef0123456789abcdef", exp); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.RecordJWT(ctx, agent, "e1", "fedcba9876543210fedcba9876543210", f.clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.advance(5*time.Minute + 30*time.Second) // the first 30 s past exp, the second 4 min 30 s
	var revoked []Issued
	if _, _, err := f.reg.EvictAgent(ctx, agent, func(_ context.Context, s []Issued) (int, error) { revoked = s; return len(s), nil }); err != nil {
		t.Fatal(err)
	}
	if len(revoked) != 1 || !revoked[0].JWT || revoked[0].Serial != "0123456789abcdef0123456789abcdef" || !revoked[0].NotAfter.Equal(exp) {
		t.Fatalf("revoked %v: want the JWT-SVID 30 s past its exp (still accepted), not the one long expired", revoked)
	}
}

// acceptedPastExp checks that go-spiffe's jwtsvid.ParseAndValidate, which
// the Workload API's ValidateJWTSVID uses, accepts a JWT-SVID whose exp
// passed by past.
func acceptedPastExp(t *testing.T, past time.Duration) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1").WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: "spiffe://example.org/w", Audience: jwt.Audience{"a"},
		IssuedAt: jwt.NewNumericDate(now.Add(-10 * time.Minute)), Expiry: jwt.NewNumericDate(now.Add(-past))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	b := jwtbundle.New(td)
	if err := b.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, b, []string{"a"}); err != nil {
		t.Fatalf("a JWT-SVID %v past its exp: %v (the leeway this test assumes is gone: JWTLeeway may shrink)", past, err)
	}
}
