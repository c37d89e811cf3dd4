package registry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// TestSupersededAgentSVIDExpiresAfterGrace runs the attack of a stolen,
// superseded agent SVID: accepted only for SupersededGrace after the
// renewal that replaced it, however long the certificate itself is valid.
func TestSupersededAgentSVIDExpiresAfterGrace(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }), Clock: func() time.Time { return now }})
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
// once the real agent has used its new SVID, which would make the thief's
// certificate current and lock out the real agent.
func TestSupersededAgentSVIDCannotRenew(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }), Clock: func() time.Time { return now }})
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
	// The real agent uses its new SVID: from now on the old one may not
	// renew.
	if _, err := r.Authorize(ctx, id, "bb"); err != nil {
		t.Fatalf("the new SVID: %v", err)
	}
	if _, err := r.Authorize(ctx, id, "aa"); err != nil {
		t.Fatalf("superseded SVID within the grace, other calls: %v; want allowed", err)
	}
	if _, err := r.AuthorizeRenewal(ctx, id, "aa"); errs.KindOf(err) != errs.Denied || !strings.Contains(err.Error(), "only the current agent SVID may renew") {
		t.Fatalf("superseded SVID within the grace, renewal: %v; want errs.Denied", err)
	}
	if _, err := r.RecordRenewal(ctx, id, "aa", "evil", now.Add(2*time.Hour)); errs.KindOf(err) != errs.Denied {
		t.Fatalf("RecordRenewal from the superseded serial: %v; want errs.Denied", err)
	}
	a, err := r.GetAgent(ctx, id)
	if err != nil || a.Serial != "bb" {
		t.Fatalf("current serial after the attack: %q %v; want bb", a.Serial, err)
	}
	if _, err := r.AuthorizeRenewal(ctx, id, "bb"); err != nil {
		t.Fatalf("the real agent's renewal: %v", err)
	}
}

// TestLostRenewalResponseRetry runs the lost-response flow: RecordRenewal
// made bb current, but the agent never got it and retries with aa. While
// bb has never been presented, aa may renew again (within the grace); once
// the current SVID is used, or after the grace, aa may not.
func TestLostRenewalResponseRetry(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		after   time.Duration
		present string // presented (Authorize) before the retry
		ok      bool
	}{
		{"current unseen", 0, "", true},
		{"current unseen, old SVID syncs", SupersededGrace / 2, "aa", true},
		{"current presented", SupersededGrace / 2, "bb", false},
		{"after the grace", SupersededGrace, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0
			r, err := New(memstore.New(), Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
				Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }), Clock: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/join_token/a")
			if _, err := r.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if _, err := r.AuthorizeRenewal(ctx, id, "aa"); err != nil {
				t.Fatal(err)
			}
			if _, err := r.RecordRenewal(ctx, id, "aa", "bb", now.Add(2*time.Hour)); err != nil {
				t.Fatal(err)
			}
			now = now.Add(tc.after)
			if tc.present != "" {
				if _, err := r.Authorize(ctx, id, tc.present); err != nil {
					t.Fatalf("presenting %s: %v", tc.present, err)
				}
			}
			_, err = r.AuthorizeRenewal(ctx, id, "aa")
			if (err == nil) != tc.ok {
				t.Fatalf("AuthorizeRenewal from aa: %v; want ok=%v", err, tc.ok)
			}
			_, err = r.RecordRenewal(ctx, id, "aa", "cc", now.Add(2*time.Hour))
			if (err == nil) != tc.ok || err != nil && errs.KindOf(err) != errs.Denied {
				t.Fatalf("RecordRenewal from aa: %v; want ok=%v", err, tc.ok)
			}
			a, err := r.GetAgent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.ok {
				if a.Serial != "bb" {
					t.Fatalf("current serial %q after a refused retry; want bb", a.Serial)
				}
				return
			}
			if a.Serial != "cc" || a.PrevSerial != "aa" || !a.PrevExpiry.Equal(t0.Add(SupersededGrace)) {
				t.Fatalf("after the retry: serial %q prev %q until %s; want cc, aa until the first renewal's grace", a.Serial, a.PrevSerial, a.PrevExpiry)
			}
			// The unseen bb is dropped for good; cc works and, once used,
			// locks aa out of renewing.
			if _, err := r.Authorize(ctx, id, "bb"); errs.KindOf(err) != errs.Denied {
				t.Fatalf("the dropped serial bb: %v; want errs.Denied", err)
			}
			if _, err := r.Authorize(ctx, id, "cc"); err != nil {
				t.Fatalf("the retried renewal's serial cc: %v", err)
			}
			if _, err := r.AuthorizeRenewal(ctx, id, "aa"); errs.KindOf(err) != errs.Denied {
				t.Fatalf("aa renewing after cc was used: %v; want errs.Denied", err)
			}
			if _, err := r.RecordRenewal(ctx, id, "aa", "dd", now.Add(2*time.Hour)); errs.KindOf(err) != errs.Denied {
				t.Fatalf("RecordRenewal from aa after cc was used: %v; want errs.Denied", err)
			}
		})
	}
}
