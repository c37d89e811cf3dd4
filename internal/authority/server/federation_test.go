package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/store"
)

// fedAuthority is one cluster: an authority with its Node API and bundle
// endpoint on loopback, restartable over the same storage.
type fedAuthority struct {
	cfg *config.Server
	raw store.Store
	srv *Server
	c   *client.Client
	td  spiffeid.TrustDomain
}

func startFedAuthority(t *testing.T, td string) *fedAuthority {
	t.Helper()
	dir := filepath.Join(t.TempDir(), td)
	cfg := baseConfig(dir)
	cfg.TrustDomain = td
	cfg.HTTPAddress = "127.0.0.1:0"
	cfg.Identity = config.Identity{NodeAPIAddress: "127.0.0.1:0"}
	cfg.Federation = config.Federation{BundleEndpoint: config.BundleEndpoint{Address: "127.0.0.1:0"}}
	srv, c := startB(t, cfg) // its cleanup stops it and closes the store
	if _, err := c.Operator.Init(context.Background(), &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	return &fedAuthority{cfg: cfg, raw: srv.raw, srv: srv, c: c, td: spiffeid.RequireTrustDomainFromString(td)}
}

// restart stops the authority and starts it again over the same storage;
// change, if given, edits its configuration in between. A running
// authority reads the configuration it was given (its leader jobs read
// cfg.Federation whenever they start, after Start returned), so a test
// never writes a.cfg while one runs: doing so before restart was a data
// race with the previous start's leader jobs.
func (a *fedAuthority) restart(t *testing.T, change ...func(*config.Server)) {
	t.Helper()
	a.c.Close()
	a.srv.Stop()
	for _, f := range change {
		f(a.cfg)
	}
	a.srv, a.c = restartStart(t, a.cfg, a.raw)
	t.Cleanup(func() { a.c.Close(); a.srv.Stop() })
	if a.srv.Sealed() {
		t.Fatal("a key-file authority did not unseal at restart")
	}
}

func (a *fedAuthority) ca(t *testing.T) *ca.CA {
	t.Helper()
	st, err := a.srv.state()
	if err != nil || st.ident.Load() == nil {
		t.Fatalf("authority %s has no CA: %v", a.td, err)
	}
	return st.ident.Load().ca
}

func (a *fedAuthority) bundleJSON(t *testing.T) []byte {
	t.Helper()
	b, err := a.c.CA.GetBundle(context.Background(), &wardv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return b.SpiffeJson
}

func (a *fedAuthority) svid(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := a.ca(t).SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(a.td, path), PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// federate makes a trust b (ward federation add on a's admin socket).
func federate(t *testing.T, a, b *fedAuthority) {
	t.Helper()
	_, err := a.c.Federation.AddFederation(context.Background(), &wardv1.AddFederationRequest{TrustDomain: b.td.Name(),
		EndpointUrl: "https://" + b.srv.BundleEndpointAddress(), Profile: "https_spiffe",
		EndpointSpiffeId: "spiffe://" + b.td.Name() + "/ward/server", BundleSpiffeJson: b.bundleJSON(t)})
	if err != nil {
		t.Fatalf("federate %s with %s: %v", a.td, b.td, err)
	}
}

func refresh(t *testing.T, a *fedAuthority, td spiffeid.TrustDomain) (*wardv1.FederationRelationship, error) {
	t.Helper()
	return a.c.Federation.RefreshFederation(context.Background(), &wardv1.RefreshFederationRequest{TrustDomain: td.Name()})
}

// TestTwoFederatedAuthorities runs two real authorities (distinct trust
// domains, loopback) federated both ways: B's agents receive A's bundle on
// Sync for entries that federate with A, and go-spiffe validates A's SVIDs
// with it; a root rotation in A reaches B; a rolled-back bundle is refused;
// the last good bundle survives a failing endpoint and a restart of B.
func TestTwoFederatedAuthorities(t *testing.T) {
	ctx := context.Background()
	a := startFedAuthority(t, "a.example")
	b := startFedAuthority(t, testTD) // B speaks the idEnv helpers (agents, Node API)
	federate(t, a, b)
	federate(t, b, a)
	for _, x := range []struct {
		in   *fedAuthority
		for_ spiffeid.TrustDomain
	}{{a, b.td}, {b, a.td}} {
		r, err := refresh(t, x.in, x.for_)
		if err != nil || r.LastError != "" || !r.HasSequence {
			t.Fatalf("%s refreshing %s: %v %v", x.in.td, x.for_, r, err)
		}
	}

	// An agent of B with an entry that federates with A gets A's bundle.
	conn, err := grpc.NewClient(b.srv.AdminAddress(), grpc.WithTransportCredentials(local.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	env := &idEnv{srv: b.srv, conn: conn, entries: wardv1.NewEntriesClient(conn), agents: wardv1.NewAgentsClient(conn), ca: wardv1.NewCAClient(conn)}
	env.refreshBundle(t)
	agent := env.joinAgent(t, "node-1")
	for _, e := range []*wardv1.Entry{
		{SpiffeId: "spiffe://" + testTD + "/client", ParentId: agent.ID.String(), Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1000"}}, FederatesWith: []string{"a.example"}},
		{SpiffeId: "spiffe://" + testTD + "/local", ParentId: agent.ID.String(), Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1001"}}},
	} {
		if _, err := env.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: e}); err != nil {
			t.Fatal(err)
		}
	}
	node := env.nodeClient(t, agent)
	sync := func() (own *spiffebundle.Bundle, fedA *spiffebundle.Bundle) {
		t.Helper()
		resp, err := node.Sync(ctx, &wardv1.SyncRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.FederatedBundles) != 1 || resp.FederatedBundles["a.example"] == nil {
			t.Fatalf("Sync federated_bundles: %v", resp.FederatedBundles)
		}
		own, err = spiffebundle.Parse(b.td, resp.BundleSpiffeJson)
		if err != nil {
			t.Fatal(err)
		}
		fedA, err = spiffebundle.Parse(a.td, resp.FederatedBundles["a.example"])
		if err != nil {
			t.Fatal(err)
		}
		return own, fedA
	}
	own, fedA := sync()
	set := x509bundle.NewSet(own.X509Bundle(), fedA.X509Bundle())
	if id, _, err := x509svid.Verify(a.svid(t, "/payments"), set); err != nil || id.TrustDomain() != a.td {
		t.Fatalf("B's bundle set does not validate A's SVID: %v %v", id, err)
	}
	// Never merged: B's own bundle does not validate A's SVID.
	if _, _, err := x509svid.Verify(a.svid(t, "/payments"), x509bundle.NewSet(own.X509Bundle())); err == nil {
		t.Fatal("A's SVID validated with B's own bundle only")
	}

	// A rotation in A (prepared root, published ahead) reaches B on refresh.
	before, _ := fedA.SequenceNumber()
	aState, err := a.srv.barrier.Store().Get(ctx, "ca/a.example/state")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CA.RotateCA(ctx, &wardv1.RotateCARequest{Prepare: true}); code(err) != codes.InvalidArgument {
		t.Fatalf("prepare without root: %v", err)
	}
	if _, err := a.c.CA.RotateCA(ctx, &wardv1.RotateCARequest{Root: true, Prepare: true}); err != nil { // ward ca rotate --root --prepare
		t.Fatal(err)
	}
	r, err := refresh(t, b, a.td)
	if err != nil || r.Sequence <= before {
		t.Fatalf("after A's PrepareRoot, B has sequence %d (was %d): %v", r.GetSequence(), before, err)
	}
	_, fedA = sync()
	if len(fedA.X509Authorities()) != 2 {
		t.Fatalf("B's agents hold %d roots of A, want 2 (the prepared one)", len(fedA.X509Authorities()))
	}
	if _, err := a.c.CA.RotateCA(ctx, &wardv1.RotateCARequest{Root: true}); err != nil { // activates the prepared root
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(a.svid(t, "/after-rotation"), x509bundle.NewSet(fedA.X509Bundle())); err != nil {
		t.Fatalf("an SVID under A's new root does not verify with the bundle B got before the rotation: %v", err)
	}
	if _, err := refresh(t, b, a.td); err != nil {
		t.Fatal(err)
	}
	good, err := b.c.Federation.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: "a.example"})
	if err != nil {
		t.Fatal(err)
	}

	// A's storage rolled back to its old CA state: A serves an older
	// sequence, and B refuses it and keeps the last good bundle.
	if _, err := a.srv.barrier.Store().Put(ctx, "ca/a.example/state", aState.Value); err != nil {
		t.Fatal(err)
	}
	if err := a.ca(t).Reload(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = refresh(t, b, a.td)
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "went backwards") {
		t.Fatalf("refresh of a rolled-back bundle: %v", err)
	}
	kept, _ := b.c.Federation.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: "a.example"})
	if kept.Sequence != good.Sequence || string(kept.BundleSpiffeJson) != string(good.BundleSpiffeJson) || kept.LastError == "" {
		t.Fatalf("after the refused rollback B holds sequence %d (good %d), error %q", kept.Sequence, good.Sequence, kept.LastError)
	}

	// A's endpoint goes away: B keeps the last good bundle, through a
	// restart of B too, and its agents still get it.
	stillValid := a.svid(t, "/still-valid")
	a.srv.Stop()
	if _, err := refresh(t, b, a.td); code(err) != codes.Unavailable {
		t.Fatalf("refresh with A down: %v", err)
	}
	b.restart(t)
	after, err := b.c.Federation.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: "a.example"})
	if err != nil || string(after.BundleSpiffeJson) != string(good.BundleSpiffeJson) || after.LastError == "" || after.Failures < 2 {
		t.Fatalf("after B's restart: %v, %v", after, err)
	}
	env.srv = b.srv
	node = env.nodeClient(t, agent)
	_, fedA = sync()
	if _, _, err := x509svid.Verify(stillValid, x509bundle.NewSet(fedA.X509Bundle())); err != nil {
		t.Fatalf("B's agents lost A's last good bundle: %v", err)
	}

	// List, metrics and the audit trail.
	l, err := b.c.Federation.ListFederations(ctx, &wardv1.ListFederationsRequest{})
	if err != nil || len(l.Relationships) != 1 {
		t.Fatalf("list: %v %v", l, err)
	}
	metrics := httpBody(t, "http://"+b.srv.HTTPAddress()+"/metrics")
	if !strings.Contains(metrics, `ward_federation_bundle_age_seconds{trust_domain="a.example"}`) {
		t.Fatal("no bundle age metric")
	}
	ops := map[string]bool{}
	for _, ev := range (&idEnv{srv: b.srv}).auditEvents(t) {
		ops[ev.Operation+":"+ev.Result] = true
	}
	for _, want := range []string{"federation.add:ok", "federation.refresh:ok", "federation.refresh:denied"} {
		if !ops[want] {
			t.Errorf("B's audit log lacks %s", want)
		}
	}
	if _, err := b.c.Federation.RemoveFederation(ctx, &wardv1.RemoveFederationRequest{TrustDomain: "a.example"}); err != nil {
		t.Fatal(err)
	}
	if resp, err := node.Sync(ctx, &wardv1.SyncRequest{}); err != nil || len(resp.FederatedBundles) != 0 {
		t.Fatalf("Sync after remove: %v %v", resp.GetFederatedBundles(), err)
	}
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestFederationFromConfig: a relationship declared in the server config
// is stored at unseal from its bundle_file, refreshes like any other, cannot
// be removed through the API, and leaves when it leaves the config.
func TestFederationFromConfig(t *testing.T) {
	ctx := context.Background()
	a := startFedAuthority(t, "a.example")
	dir := filepath.Join(t.TempDir(), "b")
	boot := filepath.Join(filepath.Dir(dir), "a.bundle.json")
	if err := os.WriteFile(boot, a.bundleJSON(t), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(dir)
	cfg.TrustDomain = "b.example"
	cfg.Federation = config.Federation{TrustDomains: []config.FederatedDomain{{TrustDomain: "a.example",
		Endpoint: "https://" + a.srv.BundleEndpointAddress(), BundleFile: boot}}}
	srv, c := startB(t, cfg)
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	b := &fedAuthority{cfg: cfg, raw: srv.raw, srv: srv, c: c, td: spiffeid.RequireTrustDomainFromString("b.example")}
	r, err := refresh(t, b, a.td)
	if err != nil || r.Source != "config" || r.EndpointSpiffeId != "spiffe://a.example/ward/server" {
		t.Fatalf("config relationship: %v, %v", r, err)
	}
	if _, err := c.Federation.RemoveFederation(ctx, &wardv1.RemoveFederationRequest{TrustDomain: "a.example"}); code(err) != codes.FailedPrecondition {
		t.Fatalf("removing a config relationship through the API: %v", err)
	}
	// The bootstrap file is read only while the relationship is not stored:
	// gone now, the restart keeps the stored (refreshed) bundle.
	os.Remove(boot)
	b.restart(t)
	if r, err := b.c.Federation.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: "a.example"}); err != nil || len(r.BundleSpiffeJson) == 0 {
		t.Fatalf("after restart: %v, %v", r, err)
	}
	b.restart(t, func(cfg *config.Server) { cfg.Federation.TrustDomains = nil })
	if l, err := b.c.Federation.ListFederations(ctx, &wardv1.ListFederationsRequest{}); err != nil || len(l.Relationships) != 0 {
		t.Fatalf("a relationship removed from the config stayed: %v, %v", l, err)
	}
}

// The network endpoint bound of a relationship travels through the admin
// API (ward federation add --network-endpoint-cidr, ward apply) and back
// (show, export); without network, or covering everything, it is refused.
func TestFederationNetworkEndpointsThroughTheAdminAPI(t *testing.T) {
	ctx := context.Background()
	a := startFedAuthority(t, "a.example")
	b := startFedAuthority(t, "b.example")
	req := func(network bool, cidrs ...string) *wardv1.AddFederationRequest {
		return &wardv1.AddFederationRequest{TrustDomain: b.td.Name(), EndpointUrl: "https://" + b.srv.BundleEndpointAddress(), Profile: "https_spiffe",
			EndpointSpiffeId: "spiffe://b.example/ward/server", BundleSpiffeJson: b.bundleJSON(t), Network: network, NetworkEndpointCidrs: cidrs}
	}
	for _, bad := range []*wardv1.AddFederationRequest{req(false, "198.51.100.0/24"), req(true, "0.0.0.0/0"), req(true, "198.51.100.1")} {
		if _, err := a.c.Federation.AddFederation(ctx, bad); code(err) != codes.InvalidArgument {
			t.Fatalf("AddFederation %v: %v, want InvalidArgument", bad.NetworkEndpointCidrs, err)
		}
	}
	if _, err := a.c.Federation.AddFederation(ctx, req(true, "198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	r, err := a.c.Federation.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: "b.example"})
	if err != nil || !r.Network || strings.Join(r.NetworkEndpointCidrs, ",") != "198.51.100.0/24" {
		t.Fatalf("show: %v, %v", r, err)
	}
}
