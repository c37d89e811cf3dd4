package workloadapi

import (
	"context"
	"testing"

	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
)

// FuzzValidateJWTSVID feeds arbitrary tokens, audiences and requested IDs to
// the handlers that parse caller input: they must answer with a status code,
// never panic, never validate a token the CA did not sign, nor one whose
// jti is revoked.
func FuzzValidateJWTSVID(f *testing.F) {
	c := newTestCA(f)
	src := newMemSource(f, c)
	src.addEntry(f, "/a", "test:socket:a")
	s := New(src, socketAttestor("a"))
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Caller: attest.Caller{PID: 1}}})
	good, err := c.SignJWTSVID(ctx, spiffeid.RequireFromPath(td, "/a"), []string{"aud"}, 0)
	if err != nil {
		f.Fatal(err)
	}
	// The same source with good's jti revoked: nothing validates there.
	rsrc := &revokingSource{memSource: src, revoked: map[string]bool{}}
	rsrc.revoke(td.Name(), good.JTI)
	rs := New(rsrc, socketAttestor("a"))
	f.Add(good.Token, "aud", "spiffe://prod-eu.example.org/a")
	f.Add("e30.e30.", "aud", "spiffe://x")
	f.Add("a.b.c", "", "")
	f.Fuzz(func(t *testing.T, tok, aud, id string) {
		resp, err := s.ValidateJWTSVID(ctx, &pb.ValidateJWTSVIDRequest{Svid: tok, Audience: aud})
		if err == nil {
			if tok != good.Token || aud != "aud" || resp.SpiffeId != "spiffe://prod-eu.example.org/a" {
				t.Fatalf("validated a token the CA did not sign for this audience: %q %q", tok, aud)
			}
		} else if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("ValidateJWTSVID: %v", err)
		}
		if _, err := rs.ValidateJWTSVID(ctx, &pb.ValidateJWTSVIDRequest{Svid: tok, Audience: aud}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("ValidateJWTSVID with the token's jti revoked: %v, want InvalidArgument", err)
		}
		_, err = s.FetchJWTSVID(ctx, &pb.JWTSVIDRequest{Audience: []string{aud}, SpiffeId: id})
		switch status.Code(err) {
		case codes.OK, codes.InvalidArgument, codes.PermissionDenied:
		default:
			t.Fatalf("FetchJWTSVID: %v", err)
		}
	})
}
