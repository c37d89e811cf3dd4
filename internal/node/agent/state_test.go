package agent

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/attest"
)

var trustDomainForFuzz = spiffeid.RequireTrustDomainFromString("prod.example.org")

// TestRotateAtJitter: 10,000 SVIDs issued in the same second rotate
// between 45% and 55% of their life, spread evenly, not in a burst.
func TestRotateAtJitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(1700000000, 0)
	nb, na := now.Add(-10*time.Second), now.Add(time.Hour)
	const n = 10000
	const buckets = 10
	var hist [buckets]int
	seconds := map[int64]int{}
	for range n {
		at := rotateAt(now, nb, na, r.Float64())
		f := float64(at.Sub(now)) / float64(time.Hour)
		if f < 0.45 || f >= 0.55 {
			t.Fatalf("rotation at %.4f of the life, want [0.45, 0.55)", f)
		}
		hist[int((f-0.45)/0.10*buckets)]++
		seconds[at.Unix()]++
	}
	// Chi-square against uniform, 9 degrees of freedom: 27.9 is p = 0.001.
	chi := 0.0
	for _, c := range hist {
		d := float64(c) - n/buckets
		chi += d * d / (n / buckets)
	}
	if chi > 27.9 {
		t.Fatalf("rotation times not uniform: histogram %v (chi² %.1f)", hist, chi)
	}
	busiest := 0
	for _, c := range seconds {
		busiest = max(busiest, c)
	}
	// 10,000 over a 360 s window: about 28 per second on average.
	if len(seconds) < 300 || busiest > 80 {
		t.Fatalf("rotations bunch up: %d distinct seconds, busiest has %d", len(seconds), busiest)
	}
	// Backdated NotBefore does not shorten short TTLs; extremes of u.
	if at := rotateAt(now, now.Add(-10*time.Second), now.Add(4*time.Second), 0); at.Sub(now) != 1800*time.Millisecond {
		t.Fatalf("short TTL: rotate after %v, want 1.8s", at.Sub(now))
	}
	if at := rotateAt(now, now, now, 0.5); !at.Equal(now) {
		t.Fatal("zero life must rotate now")
	}
	if at := rotateAt(now, now, now.Add(100*time.Second), math.Nextafter(1, 0)); at.Sub(now) >= 55*time.Second {
		t.Fatal("u near 1 reached 55%")
	}
}

func sel(t testing.TB, s ...string) []attest.Selector {
	t.Helper()
	out, err := attest.ParseSelectors(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func protoEntry(id, path string, selectors ...string) *wardv1.Entry {
	e := &wardv1.Entry{Id: id, SpiffeId: "spiffe://prod.example.org" + path, Revision: 1}
	for _, s := range selectors {
		typ, val, _ := strings.Cut(s, ":")
		e.Selectors = append(e.Selectors, &wardv1.Selector{Type: typ, Value: val})
	}
	return e
}

// bareAgent is an Agent with no authority, for the Source methods.
func bareAgent(t testing.TB) *Agent {
	t.Helper()
	return &Agent{td: trustDomainForFuzz, now: time.Now, jitter: rand.Float64, entries: map[string]*entry{},
		index: map[attest.Selector][]*entry{}, byID: map[spiffeid.ID][]*entry{}, svids: map[string]*svid{},
		changed: make(chan struct{}), retryIssue: map[string]time.Time{}, log: discardLogger()}
}

func TestIdentitiesSelectorMatching(t *testing.T) {
	a := bareAgent(t)
	err := a.applySync(&wardv1.SyncResponse{Entries: []*wardv1.Entry{
		protoEntry("e1", "/web", "unix:uid:1000"),
		protoEntry("e2", "/web-admin", "unix:uid:1000", "unix:gid:50"),
		protoEntry("e3", "/db", "unix:uid:2000"),
		protoEntry("e4", "/bin", "unix:path:/usr/bin/app", "unix:uid:1000"),
		protoEntry("e5", "/web", "unix:gid:50"), // same ID as e1 via another entry
		protoEntry("bad", "/x"),                 // no selectors: skipped
		{Id: "outside", SpiffeId: "spiffe://other.org/x", Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1000"}}},
		protoEntry("badsel", "/y", "unix:uid:-1"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		caller []attest.Selector
		want   []string
	}{
		{"uid only", sel(t, "unix:uid:1000"), []string{"/web"}},
		{"uid and gid", sel(t, "unix:uid:1000", "unix:gid:50"), []string{"/web", "/web-admin"}},
		{"gid only", sel(t, "unix:gid:50"), []string{"/web"}},
		{"other uid", sel(t, "unix:uid:2000", "unix:gid:50"), []string{"/db", "/web"}},
		{"path and uid", sel(t, "unix:uid:1000", "unix:path:/usr/bin/app", "unix:sha256:"+fmtHex(64)), []string{"/bin", "/web"}},
		{"nothing", sel(t, "unix:uid:3000"), nil},
		{"no selectors", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, id := range a.Identities(tt.caller) {
				got = append(got, id.ID.Path())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
	if len(a.entries) != 5 {
		t.Fatalf("invalid entries kept: %d", len(a.entries))
	}
}

func fmtHex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = "0123456789abcdef"[i%16]
	}
	return string(b)
}

func TestSubsetSortedMatchesAttestSubset(t *testing.T) {
	pool := sel(t, "unix:uid:1", "unix:uid:2", "unix:gid:1", "unix:gid:2", "unix:path:/a", "k8s:ns:x")
	r := rand.New(rand.NewPCG(3, 4))
	pick := func() []attest.Selector {
		var out []attest.Selector
		for _, s := range pool {
			if r.IntN(2) == 0 {
				out = append(out, s)
			}
		}
		return attest.Normalize(out)
	}
	for range 5000 {
		req, have := pick(), pick()
		if subsetSorted(req, have) != attest.Subset(req, have) {
			t.Fatalf("subsetSorted(%v, %v) disagrees with attest.Subset", req, have)
		}
	}
}

func TestApplySyncNotifiesOnlyOnChange(t *testing.T) {
	a := bareAgent(t)
	resp := &wardv1.SyncResponse{Entries: []*wardv1.Entry{protoEntry("e1", "/web", "unix:uid:1000")}}
	ch := a.Changed()
	if err := a.applySync(resp); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("new entry did not notify")
	}
	ch = a.Changed()
	a.applySync(resp)
	select {
	case <-ch:
		t.Fatal("identical sync notified")
	default:
	}
	resp.Entries[0].Revision = 2
	resp.Entries[0].Hint = "primary"
	a.applySync(resp)
	select {
	case <-ch:
	default:
		t.Fatal("changed entry did not notify")
	}
	if got := a.Identities(sel(t, "unix:uid:1000")); len(got) != 1 || got[0].Hint != "primary" {
		t.Fatalf("hint not applied: %+v", got)
	}
}
