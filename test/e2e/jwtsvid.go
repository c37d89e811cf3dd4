package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// FetchJWTSVID fetches a JWT-SVID for audience from the agent whose
// Workload API listens on socket, as this process's workload; it returns
// the token and its jti.
func FetchJWTSVID(t testing.TB, socket, audience string) (token, jti string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("fetch JWT-SVID from %s: %v", socket, err)
	}
	jti, _ = s.Claims["jti"].(string)
	return s.Marshal(), jti
}

// ValidateJWTSVID asks the agent whose Workload API listens on socket to
// validate token for audience (ValidateJWTSVID), as this process's
// workload.
func ValidateJWTSVID(socket, token, audience string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := workloadapi.ValidateJWTSVID(ctx, token, audience, workloadapi.WithAddr("unix://"+socket))
	return err
}

// WaitJWTSVIDRefused polls ValidateJWTSVID on socket until token is
// refused as revoked (the deadline bounds the test only) and fails the
// test otherwise.
func WaitJWTSVIDRefused(t testing.TB, socket, token, audience, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := ValidateJWTSVID(socket, token, audience)
		if err != nil && strings.Contains(err.Error(), "revoked") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: ValidateJWTSVID still answers %v, want a refusal as revoked", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
