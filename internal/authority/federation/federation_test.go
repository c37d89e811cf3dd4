package federation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
	"github.com/wardproject/ward/internal/testutil/clock"
)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.example")
	tdB = spiffeid.RequireTrustDomainFromString("b.example")
)

func newCA(t testing.TB, td spiffeid.TrustDomain) *ca.CA {
	t.Helper()
	return authoritytest.New(t, authoritytest.WithTrustDomain(td.Name()), authoritytest.WithCAConfig(func(c *ca.Config) { c.RefreshHint = time.Minute })).CA
}

func bundleOf(t testing.TB, c *ca.CA) *spiffebundle.Bundle {
	t.Helper()
	b, err := c.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func svid(t testing.TB, c *ca.CA, path string) []*x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(c.TrustDomain(), path), PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// auditLog collects events; fail makes appends fail.
type auditLog struct {
	mu   sync.Mutex
	evs  []audit.Event
	fail atomic.Bool
}

func (a *auditLog) append(_ context.Context, ev audit.Event) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	if a.fail.Load() {
		return errors.New("audit down")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, ev)
	return nil
}

func (a *auditLog) ops() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.evs {
		out = append(out, e.Operation+":"+e.Result)
	}
	return out
}

// fixture is authority B (the manager) federating with A (a real CA and
// bundle endpoint, or a fake endpoint presenting A's server SVID).
type fixture struct {
	a     *ca.CA
	st    *memstore.Store
	aud   *auditLog
	clk   *clock.Fake
	m     *Manager
	ep    *Endpoint
	url   string
	fake  *fakeEndpoint
	fakeU string
}

func (f *fixture) open(t testing.TB) *Manager {
	t.Helper()
	m, err := Open(context.Background(), Options{Store: f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(f.aud.append), Clock: f.clk.Now,
		MinRefresh: 10 * time.Second, MaxRefresh: time.Hour, FetchTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{a: newCA(t, tdA), st: memstore.New(), aud: &auditLog{}, clk: clock.At(time.Now())}
	f.m = f.open(t)
	ep, err := NewEndpoint(EndpointConfig{CA: f.a, Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	f.ep, f.url = ep, "https://"+ep.Addr(ProfileSPIFFE).String()+"/"
	f.fake = newFakeEndpoint(t, f.a)
	f.fakeU = f.fake.url
	return f
}

func (f *fixture) rel(endpoint string) Relationship {
	return Relationship{TrustDomain: tdA, EndpointURL: endpoint, Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdA, "/ward/server")}
}

// fakeEndpoint presents A's server SVID and serves whatever is set.
type fakeEndpoint struct {
	url    string
	status atomic.Int32
	body   atomic.Pointer[[]byte]
}

func newFakeEndpoint(t testing.TB, a *ca.CA) *fakeEndpoint {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := a.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(tdA, "/ward/server"), PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: k, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	fe := &fakeEndpoint{}
	fe.status.Store(200)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == WitnessPath {
			w.Header().Set(witnessHeader, "1")
		}
		w.WriteHeader(int(fe.status.Load()))
		if b := fe.body.Load(); b != nil {
			_, _ = w.Write(*b)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	fe.url = "https://" + ln.Addr().String() + "/bundle"
	return fe
}

func (fe *fakeEndpoint) serve(status int, body []byte) {
	fe.status.Store(int32(status))
	fe.body.Store(&body)
}

func marshal(t testing.TB, b *spiffebundle.Bundle) []byte {
	t.Helper()
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestServeAndValidateAcrossTrustDomains(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.m.Add(ctx, f.rel(f.url), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	st, err := f.m.Refresh(ctx, tdA)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if st.LastError != "" || st.Failures != 0 || !st.HasSequence {
		t.Fatalf("status after refresh: %+v", st)
	}
	// An SVID of A validates with what B holds for A...
	chain := svid(t, f.a, "/payments")
	id, _, err := x509svid.Verify(chain, f.m)
	if err != nil || id.String() != "spiffe://a.example/payments" {
		t.Fatalf("verify A's SVID in B: %v, %v", id, err)
	}
	// ...and A's keys never validate an ID of another trust domain: an
	// SVID claiming c.example issued by a CA for c.example is unknown.
	c := newCA(t, spiffeid.RequireTrustDomainFromString("c.example"))
	if _, _, err := x509svid.Verify(svid(t, c, "/x"), f.m); err == nil {
		t.Fatal("an SVID of an unfederated trust domain verified")
	}
	if _, err := f.m.GetBundleForTrustDomain(tdB); err == nil {
		t.Fatal("the manager returned a bundle for its own trust domain")
	}
	docs := f.m.BundleDocuments([]string{"a.example", "c.example", "not a td!"})
	if len(docs) != 1 || docs["a.example"] == nil {
		t.Fatalf("BundleDocuments = %v", docs)
	}
	if _, err := spiffebundle.Parse(tdA, docs["a.example"]); err != nil {
		t.Fatal(err)
	}
}

func TestRotationReachesPeer(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.m.Add(ctx, f.rel(f.url), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	before, _ := f.m.Show(tdA)
	if err := f.a.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := f.m.Refresh(ctx, tdA)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sequence <= before.Sequence || len(st.Bundle.X509Authorities()) != 2 {
		t.Fatalf("after PrepareRoot: sequence %d (was %d), %d roots", st.Sequence, before.Sequence, len(st.Bundle.X509Authorities()))
	}
	// The prepared root reached B before it signs anything; after the
	// rotation A's new SVIDs verify in B.
	if err := f.a.RotateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid(t, f.a, "/after-rotation"), f.m); err != nil {
		t.Fatalf("an SVID under A's new root does not verify in B: %v", err)
	}
	ops := strings.Join(f.aud.ops(), " ")
	if !strings.Contains(ops, "federation.add:ok") || !strings.Contains(ops, "federation.refresh:ok") {
		t.Fatalf("audit: %s", ops)
	}
}

func TestRefusalsKeepLastGoodBundle(t *testing.T) {
	ctx := context.Background()
	other := newCA(t, tdB)
	tests := []struct {
		name    string
		status  int
		body    func(t testing.TB, f *fixture) []byte
		refused bool // ErrRefused (audited as denied) rather than a fetch error
		want    string
	}{
		{"rollback", 200, func(t testing.TB, f *fixture) []byte {
			b := bundleOf(t, f.a)
			b.SetSequenceNumber(0)
			return marshal(t, b)
		}, true, "went backwards"},
		{"malformed", 200, func(testing.TB, *fixture) []byte { return []byte(`{"keys": [{"use": "x509-svid"`) }, true, "malformed"},
		{"no authorities", 200, func(testing.TB, *fixture) []byte { return []byte(`{"keys": []}`) }, true, "no authorities"},
		{"keys of another trust domain", 200, func(t testing.TB, f *fixture) []byte {
			b := bundleOf(t, other)
			b.SetSequenceNumber(1 << 40)
			return marshal(t, b)
		}, true, "names trust domain \"b.example\""},
		{"server error", 500, func(testing.TB, *fixture) []byte { return []byte("boom") }, false, "500"},
		{"too big", 200, func(testing.TB, *fixture) []byte { return make([]byte, MaxBundleSize+10) }, true, "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			good := bundleOf(t, f.a)
			if _, err := f.m.Add(ctx, f.rel(f.fakeU), good); err != nil {
				t.Fatal(err)
			}
			f.fake.serve(tc.status, tc.body(t, f))
			st, err := f.m.Refresh(ctx, tdA)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refresh error %v, want it to contain %q", err, tc.want)
			}
			if errors.Is(err, ErrRefused) != tc.refused {
				t.Fatalf("errors.Is(ErrRefused) = %v, want %v (%v)", !tc.refused, tc.refused, err)
			}
			if !st.Bundle.Equal(good) || st.LastError == "" || st.Failures != 1 {
				t.Fatalf("status after a failed refresh: failures %d, error %q, kept bundle %v", st.Failures, st.LastError, st.Bundle.Equal(good))
			}
			// Kept across a restart, error and all.
			m2 := f.open(t)
			st2, err := m2.Show(tdA)
			if err != nil || !st2.Bundle.Equal(good) || st2.LastError != st.LastError {
				t.Fatalf("after restart: %+v, %v", st2, err)
			}
			if _, _, err := x509svid.Verify(svid(t, f.a, "/w"), m2); err != nil {
				t.Fatalf("last good bundle does not verify after restart: %v", err)
			}
			want := "federation.refresh:error"
			if tc.refused {
				want = "federation.refresh:denied"
			}
			if ops := strings.Join(f.aud.ops(), " "); !strings.Contains(ops, want) {
				t.Fatalf("audit %s, want %s", ops, want)
			}
		})
	}
}

func TestScheduleBackoffAndStaleness(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.m.Add(ctx, f.rel(f.fakeU), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	f.fake.serve(200, marshal(t, bundleOf(t, f.a)))
	next := f.m.RefreshDue(ctx)
	// A's refresh hint is 1m.
	if got := next.Sub(f.clk.Now()); got != time.Minute {
		t.Fatalf("next refresh in %s, want the 1m hint", got)
	}
	if n := len(f.aud.ops()); n != 2 {
		t.Fatalf("an unchanged scheduled refresh was audited: %v", f.aud.ops())
	}
	if f.m.RefreshDue(ctx) != next {
		t.Fatal("a refresh ran before it was due")
	}
	f.fake.serve(503, nil)
	var delays []time.Duration
	for range 4 {
		f.clk.Advance(time.Hour)
		n := f.m.RefreshDue(ctx)
		delays = append(delays, n.Sub(f.clk.Now()))
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute}
	if fmt.Sprint(delays) != fmt.Sprint(want) {
		t.Fatalf("retry delays %v, want %v", delays, want)
	}
	st, _ := f.m.Show(tdA)
	if !st.Stale || st.Failures != 4 || len(f.m.Warnings()) != 1 {
		t.Fatalf("after 4h of failures: stale %v, failures %d, warnings %v", st.Stale, st.Failures, f.m.Warnings())
	}
	if n := len(f.aud.ops()); n != 2 {
		t.Fatalf("plain outages were audited: %v", f.aud.ops())
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(func() *Manager { return f.m }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			v := mm.GetGauge().GetValue() + mm.GetCounter().GetValue()
			k := mf.GetName()
			for _, l := range mm.GetLabel() {
				k += " " + l.GetValue()
			}
			got[k] = fmt.Sprint(v)
		}
	}
	// 7: the six bundle series and the revocation channel's error gauge (no
	// channel runs here).
	if len(got) != 7 || got["ward_federation_revocation_channel_error a.example"] != "0" || got["ward_federation_bundle_stale a.example"] != "1" || got["ward_federation_bundle_age_seconds a.example"] != "14400" ||
		got["ward_federation_refreshes_total error a.example"] != "4" || got["ward_federation_refreshes_total ok a.example"] != "1" {
		t.Fatalf("metrics: %v", got)
	}
	f.fake.serve(200, marshal(t, bundleOf(t, f.a)))
	f.clk.Advance(time.Hour)
	f.m.RefreshDue(ctx)
	if st, _ := f.m.Show(tdA); st.Stale || st.Failures != 0 || st.LastError != "" || len(f.m.Warnings()) != 0 {
		t.Fatalf("after recovery: %+v", st)
	}
}

func TestAuditFailureWithholdsNewBundle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := bundleOf(t, f.a)
	if _, err := f.m.Add(ctx, f.rel(f.url), good); err != nil {
		t.Fatal(err)
	}
	if err := f.a.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	f.aud.fail.Store(true)
	st, err := f.m.Refresh(ctx, tdA)
	if !errors.Is(err, ErrUnavailable) || !st.Bundle.Equal(good) {
		t.Fatalf("refresh with the audit log down: %v, new bundle installed %v", err, !st.Bundle.Equal(good))
	}
	if err := f.m.Remove(ctx, tdA); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("remove with the audit log down: %v", err)
	}
	f.aud.fail.Store(false)
	if st, err := f.m.Refresh(ctx, tdA); err != nil || len(st.Bundle.X509Authorities()) != 2 {
		t.Fatalf("refresh after the audit log is back: %v", err)
	}
}

func TestAddValidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := bundleOf(t, f.a)
	srvID := spiffeid.RequireFromPath(tdA, "/ward/server")
	tests := []struct {
		name string
		rel  Relationship
		b    *spiffebundle.Bundle
		want error
	}{
		{"own trust domain", Relationship{TrustDomain: tdB, EndpointURL: "https://x", Profile: ProfileSPIFFE, EndpointID: spiffeid.RequireFromPath(tdB, "/s")}, bundleOf(t, newCA(t, tdB)), ErrInvalid},
		{"http url", Relationship{TrustDomain: tdA, EndpointURL: "http://x", Profile: ProfileSPIFFE, EndpointID: srvID}, good, ErrInvalid},
		{"no endpoint id", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileSPIFFE}, good, ErrInvalid},
		{"endpoint id elsewhere", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileSPIFFE, EndpointID: spiffeid.RequireFromPath(tdB, "/s")}, good, ErrInvalid},
		{"web with id", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileWeb, EndpointID: srvID}, good, ErrInvalid},
		{"bad profile", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: "ftp"}, good, ErrInvalid},
		{"spiffe without bundle", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileSPIFFE, EndpointID: srvID}, nil, ErrInvalid},
		{"bundle of another td", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileSPIFFE, EndpointID: srvID}, bundleOf(t, newCA(t, tdB)), ErrInvalid},
		{"web without bundle", Relationship{TrustDomain: tdA, EndpointURL: "https://x", Profile: ProfileWeb}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.m.Add(ctx, tc.rel, tc.b)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Add = %v, want %v", err, tc.want)
			}
			if err == nil {
				if err := f.m.Remove(ctx, tc.rel.TrustDomain); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if _, err := f.m.Add(ctx, f.rel(f.url), good); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Add(ctx, f.rel(f.url), good); !errors.Is(err, ErrExists) {
		t.Fatalf("second add: %v", err)
	}
	if err := f.m.Remove(ctx, tdB); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove unknown: %v", err)
	}
}

func TestDeclareFromConfig(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := bundleOf(t, f.a)
	r := f.rel(f.url)
	if err := f.m.Declare(ctx, []Relationship{r}, map[spiffeid.TrustDomain]*spiffebundle.Bundle{tdA: good}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Refresh(ctx, tdA); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Remove(ctx, tdA); !errors.Is(err, ErrConfigured) {
		t.Fatalf("removing a configured relationship through the API: %v", err)
	}
	// A changed endpoint keeps the last good bundle and needs no bootstrap.
	r.EndpointURL = f.fakeU
	if err := f.m.Declare(ctx, []Relationship{r}, nil); err != nil {
		t.Fatal(err)
	}
	st, _ := f.m.Show(tdA)
	if st.EndpointURL != f.fakeU || !st.Bundle.Equal(good) || st.Source != SourceConfig {
		t.Fatalf("after changing the endpoint: %+v", st)
	}
	if err := f.m.Declare(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.m.List()) != 0 {
		t.Fatal("an undeclared config relationship stayed")
	}
}

func TestCheckBundle(t *testing.T) {
	a := newCA(t, tdA)
	good := bundleOf(t, a)
	mk := func(mut func(*x509.Certificate), signer any) *x509.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(),
			NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
			URIs: []*url.URL{tdA.ID().URL()}}
		mut(tmpl)
		var sk any = k
		if signer != nil {
			sk = signer
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, sk)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	smallRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	tests := []struct {
		name string
		b    func() *spiffebundle.Bundle
		want string
	}{
		{"ward bundle", func() *spiffebundle.Bundle { return good }, ""},
		{"not a CA", func() *spiffebundle.Bundle {
			return spiffebundle.FromX509Authorities(tdA, []*x509.Certificate{mk(func(c *x509.Certificate) { c.IsCA = false; c.KeyUsage = x509.KeyUsageDigitalSignature }, nil)})
		}, "not a CA"},
		{"foreign SAN", func() *spiffebundle.Bundle {
			return spiffebundle.FromX509Authorities(tdA, []*x509.Certificate{mk(func(c *x509.Certificate) { c.URIs = []*url.URL{tdB.ID().URL()} }, nil)})
		}, "names trust domain"},
		{"bad self-signature", func() *spiffebundle.Bundle {
			return spiffebundle.FromX509Authorities(tdA, []*x509.Certificate{mk(func(*x509.Certificate) {}, other)})
		}, "does not verify"},
		{"small RSA JWT key", func() *spiffebundle.Bundle {
			return spiffebundle.FromJWTAuthorities(tdA, map[string]crypto.PublicKey{"k": &smallRSA.PublicKey})
		}, "1024-bit"},
		{"wrong trust domain", func() *spiffebundle.Bundle { return bundleOf(t, newCA(t, tdB)) }, "expected \"a.example\""},
		{"empty", func() *spiffebundle.Bundle { return spiffebundle.New(tdA) }, "no authorities"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckBundle(tdA, tc.b())
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckBundle = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckUpdate(t *testing.T) {
	a := newCA(t, tdA)
	b5 := bundleOf(t, a)
	b5.SetSequenceNumber(5)
	with := func(seq *uint64, extra bool) *spiffebundle.Bundle {
		b := b5.Clone()
		if seq == nil {
			b.ClearSequenceNumber()
		} else {
			b.SetSequenceNumber(*seq)
		}
		if extra {
			b.AddX509Authority(bundleOf(t, newCA(t, tdA)).X509Authorities()[0])
		}
		return b
	}
	u := func(v uint64) *uint64 { return &v }
	noSeq := with(nil, false)
	tests := []struct {
		name       string
		prev, next *spiffebundle.Bundle
		want       string
	}{
		{"first", nil, b5, ""},
		{"same", b5, with(u(5), false), ""},
		{"newer", b5, with(u(6), true), ""},
		{"older", b5, with(u(4), false), "went backwards"},
		{"dropped sequence", b5, noSeq, "no spiffe_sequence"},
		{"changed without sequence", b5, with(u(5), true), "without a new spiffe_sequence"},
		{"previous had none", noSeq, with(u(1), true), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckUpdate(tc.prev, tc.next)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("CheckUpdate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEndpointServesSPIFFEBundle(t *testing.T) {
	f := newFixture(t)
	// A go-spiffe-style client: https_spiffe, authenticating spiffe://a.example/ward/server.
	b := bundleOf(t, f.a)
	e := &entry{rel: f.rel(f.url), bundle: b}
	got, err := f.m.fetch(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(b) {
		t.Fatal("served bundle differs from the CA's")
	}
	// Another endpoint ID is refused at the handshake.
	e.rel.EndpointID = spiffeid.RequireFromPath(tdA, "/someone-else")
	if _, err := f.m.fetch(context.Background(), e); err == nil {
		t.Fatal("the endpoint was accepted under another SPIFFE ID")
	}
	// A bundle of another trust domain cannot authenticate it.
	e.rel.EndpointID = spiffeid.RequireFromPath(tdA, "/ward/server")
	e.bundle = spiffebundle.FromX509Bundle(x509bundle.FromX509Authorities(tdA, bundleOf(t, newCA(t, tdA)).X509Authorities()))
	if _, err := f.m.fetch(context.Background(), e); err == nil {
		t.Fatal("the endpoint was accepted with unrelated roots")
	}
	// Only GET.
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Post(f.url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %s", resp.Status)
	}
}

// An immediate root rotation (`ward ca rotate --root`, no prepare) still
// reaches the peer: the endpoint keeps presenting its certificate under the
// old, still published root until the peer has fetched the new one; a taint
// of the old root makes it switch at once.
func TestImmediateRootRotationReachesPeer(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.m.Add(ctx, f.rel(f.url), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Refresh(ctx, tdA); err != nil {
		t.Fatal(err)
	}
	oldRoot := f.a.State().Keys[0].ID
	if err := f.a.RotateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := f.m.Refresh(ctx, tdA)
	if err != nil || len(st.Bundle.X509Authorities()) != 2 {
		t.Fatalf("refresh after an immediate root rotation: %v", err)
	}
	if _, _, err := x509svid.Verify(svid(t, f.a, "/new"), f.m); err != nil {
		t.Fatal(err)
	}
	if err := f.a.Taint(ctx, oldRoot); err != nil {
		t.Fatal(err)
	}
	st, err = f.m.Refresh(ctx, tdA)
	if err != nil || len(st.Bundle.X509Authorities()) != 1 {
		t.Fatalf("refresh after tainting the old root: %v (%d roots)", err, len(st.Bundle.X509Authorities()))
	}
}

// Two authorities sharing one store both apply the same config at unseal:
// neither fails, and both see the one relationship.
func TestDeclareOnSharedStore(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other := f.open(t) // opened before either declared
	good := bundleOf(t, f.a)
	decl := []Relationship{f.rel(f.url)}
	boot := map[spiffeid.TrustDomain]*spiffebundle.Bundle{tdA: good}
	if err := f.m.Declare(ctx, decl, boot); err != nil {
		t.Fatal(err)
	}
	if err := other.Declare(ctx, decl, boot); err != nil {
		t.Fatalf("the second authority: %v", err)
	}
	if st, err := other.Show(tdA); err != nil || !st.Bundle.Equal(good) {
		t.Fatalf("the second authority sees %v, %v", st, err)
	}
}

// BenchmarkRefresh: one scheduled-style refresh of an unchanged bundle over
// https_spiffe on loopback (a fresh TLS handshake, parse, checks, a store
// write).
func BenchmarkRefresh(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	if _, err := f.m.Add(ctx, f.rel(f.url), bundleOf(b, f.a)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := f.m.refresh(ctx, tdA, false); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDeclareChangeAfterAConcurrentRefresh runs a config change (a
// narrowed network_endpoint_cidrs) applied by an authority whose view of
// the relationship is one write behind (another authority's refresh wrote
// it meanwhile): the change is stored and in force once Declare returns,
// as its audit event says. Before, the conflict was swallowed (audited
// ok, the old, wider bound kept until the next unseal).
func TestDeclareChangeAfterAConcurrentRefresh(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other := f.open(t)
	good := bundleOf(t, f.a)
	rel := f.rel(f.url)
	rel.Network, rel.NetworkEndpoints = true, []string{"198.51.100.0/24"}
	boot := map[spiffeid.TrustDomain]*spiffebundle.Bundle{tdA: good}
	if err := f.m.Declare(ctx, []Relationship{rel}, boot); err != nil {
		t.Fatal(err)
	}
	if err := other.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Refresh(ctx, tdA); err != nil { // other's view is now one write behind
		t.Fatal(err)
	}
	narrowed := rel
	narrowed.NetworkEndpoints = []string{"198.51.100.7/32"}
	if err := other.Declare(ctx, []Relationship{narrowed}, boot); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*Manager{"the declaring authority": other, "the stored record": f.m} {
		if e, ok := m.get(tdA); !ok || !slices.Equal(e.rel.NetworkEndpoints, narrowed.NetworkEndpoints) {
			t.Fatalf("%s keeps network_endpoint_cidrs %v after Declare narrowed it", name, e.rel.NetworkEndpoints)
		}
	}
}
