package registry

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/testutil/clock"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type fixture struct {
	reg    *Registry
	st     store.Store
	clk    *clock.Fake
	mu     sync.Mutex
	events []audit.Event
	fail   atomic.Bool // audit log down
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st, clk: clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	f.reg, err = New(st, Options{TrustDomain: td, MaxEntryTTL: 24 * time.Hour, Clock: f.clk.Now,
		Audit: audit.RecorderFunc(func(_ context.Context, ev audit.Event) error {
			if f.fail.Load() {
				return errors.New("audit down")
			}
			f.mu.Lock()
			f.events = append(f.events, ev)
			f.mu.Unlock()
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) advance(d time.Duration) {
	f.clk.Advance(d)
}

func entry(path, parent string, sels ...string) Entry {
	e := Entry{SPIFFEID: "spiffe://example.org" + path, ParentID: "spiffe://example.org" + parent}
	for _, s := range sels {
		p, err := attest.ParseSelector(s)
		if err != nil {
			panic(err)
		}
		e.Selectors = append(e.Selectors, p)
	}
	return e
}

func TestValidate(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		e    Entry
		ok   bool
	}{
		{"plain", entry("/a", "/ward/agent/n", "unix:uid:1"), true},
		{"nested parent", entry("/a", "/b", "unix:uid:1"), true},
		{"outside td", Entry{SPIFFEID: "spiffe://other.org/a", ParentID: "spiffe://example.org/ward/agent/n", Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}}, false},
		{"reserved", entry("/ward/agent/x", "/ward/agent/n", "unix:uid:1"), false},
		{"reserved root", entry("/ward", "/ward/agent/n", "unix:uid:1"), false},
		{"self parent", entry("/a", "/a", "unix:uid:1"), false},
		{"no selectors", entry("/a", "/ward/agent/n"), false},
		{"bad selector value", Entry{SPIFFEID: "spiffe://example.org/a", ParentID: "spiffe://example.org/ward/agent/n", Selectors: []attest.Selector{{Type: "unix", Value: "uid:x"}}}, false},
		{"selector with colon in type", Entry{SPIFFEID: "spiffe://example.org/a", ParentID: "spiffe://example.org/ward/agent/n", Selectors: []attest.Selector{{Type: "un:ix", Value: "uid:1"}}}, false},
		{"dots in path", Entry{SPIFFEID: "spiffe://example.org/a/../b", ParentID: "spiffe://example.org/ward/agent/n", Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := f.reg.Validate(&tc.e)
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && errs.KindOf(err) != errs.Invalid {
				t.Fatalf("kind %v, want errs.Invalid", errs.KindOf(err))
			}
		})
	}
	e := entry("/a", "/ward/agent/n", "unix:uid:2", "unix:uid:1", "unix:uid:2")
	e.DNSNames = []string{"A.Example.ORG"}
	if err := f.reg.Validate(&e); err != nil {
		t.Fatal(err)
	}
	if len(e.Selectors) != 2 || e.Selectors[0].Value != "uid:1" || e.DNSNames[0] != "a.example.org" {
		t.Fatalf("not normalized: %+v", e)
	}
	for _, ttl := range []time.Duration{-time.Second, time.Second, 25 * time.Hour} {
		e := entry("/a", "/ward/agent/n", "unix:uid:1")
		e.TTL = ttl
		if err := f.reg.Validate(&e); errs.KindOf(err) != errs.Invalid {
			t.Errorf("ttl %s: %v", ttl, err)
		}
	}
}

func TestEntryLifecycleAndAuditFailClosed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	e, err := f.reg.CreateEntry(ctx, entry("/a", "/ward/agent/n", "unix:uid:1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.CreateEntry(ctx, entry("/a", "/ward/agent/n", "unix:uid:1")); errs.KindOf(err) != errs.Exists {
		t.Fatalf("duplicate: %v", err)
	}
	// Same ID under another parent, or with other selectors, is distinct.
	if _, err := f.reg.CreateEntry(ctx, entry("/a", "/ward/agent/m", "unix:uid:1")); err != nil {
		t.Fatal(err)
	}
	// Update onto the identity of another entry is refused atomically.
	other, err := f.reg.CreateEntry(ctx, entry("/a", "/ward/agent/n", "unix:uid:2"))
	if err != nil {
		t.Fatal(err)
	}
	clash := entry("/a", "/ward/agent/n", "unix:uid:1")
	clash.ID = other.ID
	if _, err := f.reg.UpdateEntry(ctx, clash, 0); errs.KindOf(err) != errs.Conflict {
		t.Fatalf("update onto a duplicate: %v", err)
	}
	if got, _ := f.reg.GetEntry(ctx, other.ID); got.Revision != other.Revision {
		t.Fatal("refused update changed the entry")
	}
	// Audit down: nothing is created, updated or deleted.
	f.fail.Store(true)
	if _, err := f.reg.CreateEntry(ctx, entry("/b", "/ward/agent/n", "unix:uid:1")); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("create with audit down: %v", err)
	}
	if err := f.reg.DeleteEntry(ctx, e.ID); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("delete with audit down: %v", err)
	}
	if _, err := f.reg.CreateJoinToken(ctx, time.Minute, ""); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("token with audit down: %v", err)
	}
	f.fail.Store(false)
	list, _ := f.reg.ListEntries(ctx, ListFilter{})
	if len(list) != 3 {
		t.Fatalf("%d entries after refused writes, want 3", len(list))
	}
	if l, _ := f.reg.ListEntries(ctx, ListFilter{ParentID: "spiffe://example.org/ward/agent/m"}); len(l) != 1 {
		t.Fatalf("parent filter: %d", len(l))
	}
	if err := f.reg.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.GetEntry(ctx, e.ID); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("get deleted: %v", err)
	}
	if _, err := f.reg.GetEntry(ctx, "../../etc"); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("malformed id: %v", err)
	}
}

func TestJoinTokenExpiryAndSingleUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tok, err := f.reg.CreateJoinToken(ctx, time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	// Only the hash is stored.
	kvs, _ := f.st.List(ctx, "")
	for _, kv := range kvs {
		if strings.Contains(kv.Key, tok.Token) || strings.Contains(string(kv.Value), tok.Token) {
			t.Fatalf("token stored in the clear under %s", kv.Key)
		}
	}
	f.advance(time.Minute)
	if _, _, err := f.reg.ConsumeJoinToken(ctx, tok.Token); errs.KindOf(err) != errs.Denied || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	tok2, _ := f.reg.CreateJoinToken(ctx, time.Minute, "n1")
	id, tid, err := f.reg.ConsumeJoinToken(ctx, tok2.Token)
	if err != nil || id.String() != "spiffe://example.org/ward/agent/n1" || tid != tok2.ID {
		t.Fatalf("consume: %v %s %s", err, id, tid)
	}
	if _, _, err := f.reg.ConsumeJoinToken(ctx, tok2.Token); errs.KindOf(err) != errs.Denied {
		t.Fatalf("second use: %v", err)
	}
	// Concurrent redemption: one winner.
	tok3, _ := f.reg.CreateJoinToken(ctx, time.Minute, "")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := f.reg.ConsumeJoinToken(ctx, tok3.Token); err == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d redemptions of one token", wins.Load())
	}
	f.advance(2 * time.Hour)
	n, err := f.reg.PurgeTokens(ctx, time.Hour)
	if err != nil || n != 3 {
		t.Fatalf("purged %d (%v), want 3", n, err)
	}
}

func TestAgentsEvictAndAuthorize(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/ward/agent/n1")
	exp := f.clk.Now().Add(time.Hour)
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "aa", exp); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Authorize(ctx, id, "aa"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Authorize(ctx, id, "bb"); errs.KindOf(err) != errs.Denied {
		t.Fatalf("unknown serial: %v", err)
	}
	if _, err := f.reg.RecordRenewal(ctx, id, "aa", "bb", exp.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"aa", "bb"} {
		if _, err := f.reg.Authorize(ctx, id, s); err != nil {
			t.Fatalf("serial %s after renewal: %v", s, err)
		}
	}
	f.advance(time.Hour) // the previous SVID has expired
	if _, err := f.reg.Authorize(ctx, id, "aa"); errs.KindOf(err) != errs.Denied {
		t.Fatalf("expired previous serial: %v", err)
	}
	if _, err := f.reg.Authorize(ctx, id, "bb"); err != nil {
		t.Fatal(err)
	}
	a, err := f.reg.GetAgent(ctx, id)
	if err != nil || !a.LastSeen.Equal(f.clk.Now()) {
		t.Fatalf("last seen not refreshed: %v %v", a.LastSeen, err)
	}
	if _, _, err := f.reg.EvictAgent(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Authorize(ctx, id, "bb"); errs.KindOf(err) != errs.Denied || !strings.Contains(err.Error(), "agent evicted: attest again") {
		t.Fatalf("evicted authorize: %v", err)
	}
	if _, err := f.reg.RecordRenewal(ctx, id, "bb", "cc", exp); errs.KindOf(err) != errs.Denied {
		t.Fatalf("evicted renewal: %v", err)
	}
	if _, _, err := f.reg.EvictAgent(ctx, spiffeid.RequireFromString("spiffe://example.org/ward/agent/none"), nil); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("evict unknown: %v", err)
	}
	if _, _, err := f.reg.EvictAgent(ctx, spiffeid.RequireFromString("spiffe://example.org/payments"), nil); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("evict non-agent: %v", err)
	}
	// Re-attestation lifts the eviction.
	if _, err := f.reg.RecordAttestation(ctx, id, AttestJoinToken, nil, "dd", exp.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Authorize(ctx, id, "dd"); err != nil {
		t.Fatal(err)
	}
	list, _ := f.reg.ListAgents(ctx)
	if len(list) != 1 || list[0].Evicted {
		t.Fatalf("agents: %+v", list)
	}
	var evicts int
	for _, ev := range f.events {
		if ev.Operation == "agent.evict" && ev.Result == audit.ResultOK {
			evicts++
		}
	}
	if evicts != 1 {
		t.Fatalf("%d agent.evict ok events, want 1", evicts)
	}
}

func FuzzValidate(f *testing.F) {
	f.Add("spiffe://example.org/a", "spiffe://example.org/ward/agent/n", "unix", "uid:1", "a.example.org", "k", "v")
	f.Add("spiffe://example.org/ward", "x", "unix", "sha256:00", "*.x", "a b", "\x00")
	fx := newFixture(f)
	f.Fuzz(func(t *testing.T, id, parent, typ, val, dns, lk, lv string) {
		e := Entry{SPIFFEID: id, ParentID: parent, Selectors: []attest.Selector{{Type: typ, Value: val}},
			DNSNames: []string{dns}, Labels: map[string]string{lk: lv}}
		if err := fx.reg.Validate(&e); err != nil {
			if errs.KindOf(err) != errs.Invalid {
				t.Fatalf("non-Invalid error %v", err)
			}
			return
		}
		// What validates is well formed.
		sid, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil || !sid.MemberOf(td) || strings.HasPrefix(sid.Path(), "/ward") {
			t.Fatalf("accepted bad spiffe_id %q", e.SPIFFEID)
		}
		for _, s := range e.Selectors {
			if _, err := attest.ParseSelector(s.String()); err != nil {
				t.Fatalf("accepted bad selector %q", s)
			}
		}
		if CheckDNSName(e.DNSNames[0]) != nil {
			t.Fatalf("accepted bad DNS name %q", e.DNSNames[0])
		}
	})
}
