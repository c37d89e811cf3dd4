package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// catalogPair is authority A exporting services (mA, served on its bundle
// endpoint) and authority B (f.m) following A's catalog.
type catalogPair struct {
	f       *fixture
	b       *ca.CA
	mA      *Manager
	audA    *auditLog
	ep      *Endpoint
	refused atomic.Value
	updates atomic.Int32
}

func newCatalogPair(t *testing.T) *catalogPair {
	t.Helper()
	p := &catalogPair{b: newCA(t, tdB), audA: &auditLog{}}
	f := &fixture{a: newCA(t, tdA), st: memstore.New(), aud: &auditLog{}}
	p.f = f
	mB, err := Open(context.Background(), Options{Store: f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(f.aud.append),
		MinRefresh: 10 * time.Second, FetchTimeout: 5 * time.Second,
		OnCatalog: func(context.Context, spiffeid.TrustDomain, map[string]string) { p.updates.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	f.m = mB
	if p.mA, err = Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdA, Audit: audit.RecorderFunc(p.audA.append)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.mA.Add(context.Background(), Relationship{TrustDomain: tdB, EndpointURL: "https://b.invalid/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/ward/server")}, bundleOf(t, p.b)); err != nil {
		t.Fatal(err)
	}
	p.ep, err = NewEndpoint(EndpointConfig{CA: f.a, Address: "127.0.0.1:0", Revocations: newPubSource(tdA.Name()), Peers: p.mA,
		Catalog: p.mA, OnRevocationRefused: func(r string) { p.refused.Store(r) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.ep.Stop)
	f.url = "https://" + p.ep.Addr(ProfileSPIFFE).String() + "/"
	rel := f.rel(f.url)
	rel.AllowedGateways = []string{"gw.a.example:*"}
	if _, err := mB.Add(context.Background(), rel, bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	return p
}

func svcA(name string) catalog.Service {
	return catalog.Service{Name: name, SPIFFEID: "spiffe://a.example/" + name, Gateway: "gw.a.example:15443", Forward: "127.0.0.1:8443"}
}

func TestCatalogTravelsAndPersists(t *testing.T) {
	p := newCatalogPair(t)
	ctx := context.Background()
	if err := p.mA.ExportService(ctx, svcA("payments"), SourceAPI); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.f.m.RunCatalogs(runCtx, RevocationClient{SVID: serverSVID(t, p.b), Wait: 5 * time.Second})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "A's catalog at B", func() bool { return len(p.f.m.Services()["a.example"]) == 1 })
	got := p.f.m.Services()["a.example"][0]
	if got.Forward != "" || got.SPIFFEID != "spiffe://a.example/payments" || got.Gateway != "gw.a.example:15443" {
		t.Fatalf("received %+v (the forward address must stay in A)", got)
	}
	// A's own view keeps the forward address (its gateways route by it).
	if own := p.mA.Services()["a.example"]; len(own) != 1 || own[0].Forward != "127.0.0.1:8443" {
		t.Fatalf("A's own catalog: %+v", own)
	}
	// The next export arrives on the open long-poll; an unexport too.
	if err := p.mA.ExportService(ctx, svcA("ledger"), SourceAPI); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second export", func() bool { return len(p.f.m.Services()["a.example"]) == 2 })
	if err := p.mA.UnexportService(ctx, "payments", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the unexport", func() bool { return len(p.f.m.Services()["a.example"]) == 1 })
	if st := p.f.m.RemoteCatalog(tdA); st.Sequence != 3 || st.LastError != "" || !st.Has {
		t.Fatalf("status: %+v", st)
	}
	if n := strings.Count(strings.Join(p.f.aud.ops(), " "), "federation.catalog:ok"); n < 3 {
		t.Fatalf("received catalogs not audited: %v", p.f.aud.ops())
	}
	if n := strings.Count(strings.Join(p.audA.ops(), " "), "catalog.export:ok"); n != 2 {
		t.Fatalf("exports not audited: %v", p.audA.ops())
	}
	if p.updates.Load() < 3 {
		t.Fatalf("OnCatalog called %d times", p.updates.Load())
	}
	// Partitioned and restarted: the last received stays.
	p.ep.Stop()
	m2, err := Open(context.Background(), Options{Store: p.f.st, TrustDomain: tdB, Audit: audit.RecorderFunc(p.f.aud.append)})
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Services()["a.example"]; len(got) != 1 || got[0].Name != "ledger" || m2.RemoteCatalog(tdA).Sequence != 3 {
		t.Fatalf("after a restart: %+v", got)
	}
	// Removing the relationship drops it.
	if err := m2.Remove(context.Background(), tdA); err != nil {
		t.Fatal(err)
	}
	if got := m2.Services(); len(got) != 0 {
		t.Fatalf("after remove: %+v", got)
	}
}

func TestExportServiceChecks(t *testing.T) {
	p := newCatalogPair(t)
	ctx := context.Background()
	for name, s := range map[string]catalog.Service{
		"another trust domain's identity": {Name: "payments", SPIFFEID: "spiffe://c.example/payments", Gateway: "gw:1", Forward: "127.0.0.1:1"},
		"a name that is no DNS label":     {Name: "Pay.ments", SPIFFEID: "spiffe://a.example/p", Gateway: "gw:1", Forward: "127.0.0.1:1"},
		"no gateway":                      {Name: "payments", SPIFFEID: "spiffe://a.example/p", Forward: "127.0.0.1:1"},
		"no forward":                      {Name: "payments", SPIFFEID: "spiffe://a.example/p", Gateway: "gw:1"},
		"a relative unix forward":         {Name: "payments", SPIFFEID: "spiffe://a.example/p", Gateway: "gw:1", Forward: "unix://x.sock"},
	} {
		if err := p.mA.ExportService(ctx, s, SourceAPI); err == nil {
			t.Errorf("%s: exported", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if err := p.mA.ExportService(ctx, svcA("declared"), SourceConfig); err != nil {
		t.Fatal(err)
	}
	if err := p.mA.UnexportService(ctx, "declared", false); err == nil {
		t.Fatal("a service declared in the config was unexported through the API")
	}
	if err := p.mA.ExportService(ctx, svcA("declared"), SourceAPI); err == nil {
		t.Fatal("a service declared in the config was replaced through the API")
	}
	if err := p.mA.UnexportService(ctx, "nothing", false); err == nil {
		t.Fatal("unexported a service that is not exported")
	}
	// The audit log down: nothing changes.
	p.audA.fail.Store(true)
	if err := p.mA.ExportService(ctx, svcA("unaudited"), SourceAPI); err == nil {
		t.Fatal("exported without an audit event")
	}
	if l, _ := p.mA.LocalServices(); len(l) != 1 {
		t.Fatalf("local services: %+v", l)
	}
}

func TestAcceptCatalogRefusesAttacks(t *testing.T) {
	p := newCatalogPair(t)
	m := p.f.m
	ctx := context.Background()
	pub := func(name string) catalog.Service { s := svcA(name); s.Forward = ""; return s }
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 7, Services: []catalog.Service{pub("payments")}})); err != nil {
		t.Fatal(err)
	}
	many := make([]catalog.Service, catalog.MaxServices+1)
	for i := range many {
		many[i] = pub(fmt.Sprintf("s%d", i))
	}
	before := len(p.f.aud.ops())
	for name, body := range map[string][]byte{
		"a service of a third trust domain": mustJSON(Catalog{TrustDomain: "a.example", Sequence: 8, Services: []catalog.Service{{Name: "db", SPIFFEID: "spiffe://c.example/db", Gateway: "gw.a.example:1"}}}),
		"a catalog claiming another domain": mustJSON(Catalog{TrustDomain: "c.example", Sequence: 8, Services: []catalog.Service{{Name: "db", SPIFFEID: "spiffe://c.example/db", Gateway: "gw:1"}}}),
		"a replayed older sequence":         mustJSON(Catalog{TrustDomain: "a.example", Sequence: 6}),
		"the same sequence, other content":  mustJSON(Catalog{TrustDomain: "a.example", Sequence: 7}),
		"an oversized catalog":              append([]byte(`{"trust_domain":"a.example","sequence":9,"services":[{"name":"`), []byte(strings.Repeat("a", MaxCatalogUpdate))...),
		"too many services":                 mustJSON(Catalog{TrustDomain: "a.example", Sequence: 9, Services: many}),
		"unknown fields":                    []byte(`{"trust_domain":"a.example","sequence":9,"services":[],"extra":1}`),
		"a forward address":                 mustJSON(Catalog{TrustDomain: "a.example", Sequence: 9, Services: []catalog.Service{svcA("payments")}}),
		"a bad gateway address":             mustJSON(Catalog{TrustDomain: "a.example", Sequence: 9, Services: []catalog.Service{{Name: "p", SPIFFEID: "spiffe://a.example/p", Gateway: "gw"}}}),
		"a duplicate service":               mustJSON(Catalog{TrustDomain: "a.example", Sequence: 9, Services: []catalog.Service{pub("p"), pub("p")}}),
		"a bad service name":                mustJSON(Catalog{TrustDomain: "a.example", Sequence: 9, Services: []catalog.Service{{Name: "x.y", SPIFFEID: "spiffe://a.example/p", Gateway: "gw:1"}}}),
	} {
		if err := m.AcceptCatalog(ctx, tdA, body); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %.200v", name, err)
		}
	}
	refused := 0
	for _, op := range p.f.aud.ops()[before:] {
		if op == "federation.catalog:denied" {
			refused++
		}
	}
	if refused != 11 {
		t.Fatalf("%d refusals audited, want 11: %v", refused, p.f.aud.ops()[before:])
	}
	if got := m.Services()["a.example"]; len(got) != 1 || got[0].Name != "payments" || m.RemoteCatalog(tdA).Sequence != 7 {
		t.Fatalf("a refused catalog changed the state: %+v", got)
	}
	if err := m.AcceptCatalog(ctx, spiffeid.RequireTrustDomainFromString("c.example"), mustJSON(Catalog{TrustDomain: "c.example", Sequence: 1})); err == nil {
		t.Fatal("the catalog of a trust domain without a relationship accepted")
	}
	p.f.aud.fail.Store(true)
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 8})); err == nil || m.RemoteCatalog(tdA).Sequence != 7 {
		t.Fatalf("installed without its audit event: %v", err)
	}
}

func TestCatalogChannelRefusesClients(t *testing.T) {
	p := newCatalogPair(t)
	c := newCA(t, spiffeid.RequireTrustDomainFromString("c.example"))
	get := func(svid func() (*x509svid.SVID, error)) (int, string) {
		t.Helper()
		id := tlsconfig.AuthorizeID(spiffeid.RequireFromPath(tdA, "/ward/server"))
		tc := tlsconfig.TLSClientConfig(bundleOf(t, p.f.a), id)
		if svid != nil {
			tc = tlsconfig.MTLSClientConfig(svidFunc(svid), bundleOf(t, p.f.a), id)
		}
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		resp, err := cl.Get(p.f.url[:len(p.f.url)-1] + CatalogPath + "?wait=0s")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name   string
		svid   func() (*x509svid.SVID, error)
		code   int
		reason string
	}{
		{"no client certificate", nil, 401, "no_client_certificate"},
		{"a trust domain A does not federate with", serverSVID(t, c), 403, "not_federated"},
		{"a workload of B, not its server", workloadSVID(t, p.b, "/web"), 403, "not_a_server"},
	} {
		code, body := get(tc.svid)
		if code != tc.code || p.refused.Load() != tc.reason {
			t.Errorf("%s: %d %s (reason %v)", tc.name, code, body, p.refused.Load())
		}
	}
	if err := p.mA.ExportService(context.Background(), svcA("payments"), SourceAPI); err != nil {
		t.Fatal(err)
	}
	code, body := get(serverSVID(t, p.b))
	var got Catalog
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Sequence != 1 || len(got.Services) != 1 || got.Services[0].Forward != "" {
		t.Fatalf("B's server: %d %s", code, body)
	}
}

// TestCatalogGatewaysBounded is the attack of a federated peer naming a
// gateway of its choosing (an address inside this cluster) for this
// cluster's proxies to dial: outside allowed_gateways, or without them
// outside the host of the peer's bundle endpoint, the catalog is refused,
// audited and logged; a relationship narrowed later stops carrying a
// catalog accepted before.
func TestCatalogGatewaysBounded(t *testing.T) {
	p := newCatalogPair(t)
	m := p.f.m
	ctx := context.Background()
	var logs syncbuf.Buffer
	m.opts.Log = slog.New(slog.NewTextHandler(&logs, nil))
	svc := func(gw string) []catalog.Service {
		return []catalog.Service{{Name: "payments", SPIFFEID: "spiffe://a.example/payments", Gateway: gw}}
	}
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 1, Services: svc("gw.a.example:15443")})); err != nil {
		t.Fatal(err)
	}
	before := len(p.f.aud.ops())
	for _, gw := range []string{"10.0.0.5:6379", "127.0.0.1:2379", "gw.a.example.evil.test:15443", "metadata.google.internal:80"} {
		err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 2, Services: svc(gw)}))
		if err == nil || !strings.Contains(err.Error(), "allowed_gateways") {
			t.Fatalf("gateway %s: %v, want refused naming allowed_gateways", gw, err)
		}
	}
	if ops := p.f.aud.ops()[before:]; len(ops) != 4 || ops[0] != "federation.catalog:denied" {
		t.Fatalf("refusals audited: %v", ops)
	}
	if !strings.Contains(logs.String(), "refused the catalog of a federated authority") || !strings.Contains(logs.String(), "10.0.0.5:6379") {
		t.Fatalf("no log line names the refused gateway:\n%s", logs.String())
	}
	if got := m.Services()["a.example"]; len(got) != 1 || got[0].Gateway != "gw.a.example:15443" {
		t.Fatalf("a refused catalog changed what is carried: %+v", got)
	}

	// Narrowed: the catalog accepted before is no longer carried.
	rel := p.f.rel(p.f.url)
	rel.AllowedGateways = []string{"10.9.0.0/16"}
	if err := m.Declare(ctx, []Relationship{rel}, nil); err != nil {
		t.Fatal(err)
	}
	if got := m.Services()["a.example"]; len(got) != 0 {
		t.Fatalf("a gateway outside the narrowed allowed_gateways still carried: %+v", got)
	}
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 3, Services: svc("10.9.1.2:15443")})); err != nil {
		t.Fatalf("a gateway inside the CIDR: %v", err)
	}

	// No allowed_gateways: only the bundle endpoint's host.
	rel.AllowedGateways = nil
	if err := m.Declare(ctx, []Relationship{rel}, nil); err != nil {
		t.Fatal(err)
	}
	host := strings.Split(strings.TrimPrefix(p.f.url, "https://"), ":")[0]
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 4, Services: svc("gw.a.example:15443")})); err == nil ||
		!strings.Contains(err.Error(), "host of its bundle endpoint") {
		t.Fatalf("without allowed_gateways, a gateway off the endpoint's host: %v", err)
	}
	if err := m.AcceptCatalog(ctx, tdA, mustJSON(Catalog{TrustDomain: "a.example", Sequence: 4, Services: svc(host + ":15443")})); err != nil {
		t.Fatalf("without allowed_gateways, the endpoint's host: %v", err)
	}
	bad := rel
	bad.AllowedGateways = []string{"0.0.0.0/0"}
	if err := m.Declare(ctx, []Relationship{bad}, nil); err == nil {
		t.Fatal("allowed_gateways 0.0.0.0/0 accepted")
	}
}
