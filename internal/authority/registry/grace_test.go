package registry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// TestSupersededAgentSVIDExpiresAfterGrace runs the attack of a stolen,
// superseded agent SVID: accepted only for SupersededGrace after the
// renewal that replaced it, however long the certificate itself is valid.
func TestSupersededAgentSVIDExpiresAfterGrace(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: func(context.Context, audit.Event) error { return nil }, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/join_token/a")
	if _, err := r.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RecordRenewal(ctx, id, "aa", "bb", now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after  time.Duration
		serial string
		ok     bool
	}{
		{0, "bb", true},
		{0, "aa", true},
		{SupersededGrace - time.Second, "aa", true},
		{SupersededGrace, "aa", false},
		{30 * time.Minute, "aa", false}, // the old certificate is still valid for another 30 minutes
		{30 * time.Minute, "bb", true},
	} {
		now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).Add(tc.after)
		_, err := r.Authorize(ctx, id, tc.serial)
		if (err == nil) != tc.ok {
			t.Errorf("serial %s %v after the renewal: err = %v, want ok=%v", tc.serial, tc.after, err, tc.ok)
		}
	}
}

// TestSupersededAgentSVIDCannotRenew runs the attack of a stolen,
// superseded agent SVID used within the grace: it may still sync
// (Authorize), but it may not renew (AuthorizeRenewal, RecordRenewal),
// which would make the thief's certificate current and lock out the real
// agent a minute later.
func TestSupersededAgentSVIDCannotRenew(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: func(context.Context, audit.Event) error { return nil }, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/join_token/a")
	if _, err := r.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AuthorizeRenewal(ctx, id, "aa"); err != nil {
		t.Fatalf("current SVID may renew: %v", err)
	}
	if _, err := r.RecordRenewal(ctx, id, "aa", "bb", now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(SupersededGrace / 2)
	if _, err := r.Authorize(ctx, id, "aa"); err != nil {
		t.Fatalf("superseded SVID within the grace, other calls: %v; want allowed", err)
	}
	if _, err := r.AuthorizeRenewal(ctx, id, "aa"); KindOf(err) != KindDenied || !strings.Contains(err.Error(), "only the current agent SVID may renew") {
		t.Fatalf("superseded SVID within the grace, renewal: %v; want KindDenied", err)
	}
	if _, err := r.RecordRenewal(ctx, id, "aa", "evil", now.Add(2*time.Hour)); KindOf(err) != KindDenied {
		t.Fatalf("RecordRenewal from the superseded serial: %v; want KindDenied", err)
	}
	a, err := r.GetAgent(ctx, id)
	if err != nil || a.Serial != "bb" {
		t.Fatalf("current serial after the attack: %q %v; want bb", a.Serial, err)
	}
	if _, err := r.AuthorizeRenewal(ctx, id, "bb"); err != nil {
		t.Fatalf("the real agent's renewal: %v", err)
	}
}
