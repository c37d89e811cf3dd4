package workloadapi

import (
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// revokingSource is a Source following a deny-list (RevocationSource), as
// the agent does: revoked holds "td jti".
type revokingSource struct {
	*memSource
	mu      sync.Mutex
	revoked map[string]bool
}

func (r *revokingSource) JWTRevoked(td spiffeid.TrustDomain, jti string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.revoked[td.Name()+" "+jti]
}

func (r *revokingSource) revoke(td, jti string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revoked[td+" "+jti] = true
}

// TestValidateJWTSVIDRefusesRevoked runs the attack of a JWT-SVID taken
// off an evicted node: ValidateJWTSVID refuses it once its jti is on the
// deny-list of its trust domain, while a token of the same identity not
// revoked still validates, and a revocation listed under another trust
// domain does not touch it.
func TestValidateJWTSVIDRefusesRevoked(t *testing.T) {
	ctx := testCtx(t)
	c := newTestCA(t)
	src := &revokingSource{memSource: newMemSource(t, c), revoked: map[string]bool{}}
	id := src.addEntry(t, "/ns/a", uidSelector(), "test:socket:a")
	addr := serve(t, src, workload("a"))
	client, err := gsw.New(ctx, gsw.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	mint := func() (*jwtsvid.SVID, string) {
		t.Helper()
		s, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments"})
		if err != nil {
			t.Fatal(err)
		}
		jti, _ := s.Claims["jti"].(string)
		if len(jti) != 32 {
			t.Fatalf("JWT-SVID jti %q, want 128 bits in hex", jti)
		}
		return s, jti
	}
	stolen, jti := mint()
	kept, keptJTI := mint()
	if jti == keptJTI {
		t.Fatal("two JWT-SVIDs share a jti")
	}
	if _, err := client.ValidateJWTSVID(ctx, stolen.Marshal(), "payments"); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	src.revoke("other.example.org", jti) // another trust domain's list
	if _, err := client.ValidateJWTSVID(ctx, stolen.Marshal(), "payments"); err != nil {
		t.Fatalf("revoked under another trust domain only: %v", err)
	}
	src.revoke(id.TrustDomain().Name(), jti)
	_, err = client.ValidateJWTSVID(ctx, stolen.Marshal(), "payments")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked JWT-SVID: %v, want InvalidArgument naming the revocation", err)
	}
	if v, err := client.ValidateJWTSVID(ctx, kept.Marshal(), "payments"); err != nil || v.ID != id {
		t.Fatalf("a JWT-SVID not revoked: %v", err)
	}
}
