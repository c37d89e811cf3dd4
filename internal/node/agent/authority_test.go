package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

// testAuthority is the real Node API (internal/authority/nodeapi) over the
// shared test authority (testutil/authoritytest: real CA and registry),
// with join tokens, x509pop, eviction and audit as in production, on a
// loopback port that survives stop and restart.
type testAuthority struct {
	*authoritytest.Authority
	t        testing.TB
	ca       *ca.CA
	addr     string
	agentTTL time.Duration
	// nodeCA signs x509pop node certificates.
	nodeCA    *x509.Certificate
	nodeCAKey *ecdsa.PrivateKey
	audit     authoritytest.AuditSource // counts the syncs that reach the service

	mu     sync.Mutex
	srv    *nodeapi.Server
	agents []spiffeid.ID // the agents entries are registered under
	// federated, when set, answers Sync's federated_bundles.
	federated func(names []string) map[string][]byte
	// psat, when set before start, enables k8s_psat attestation.
	psat map[string]nodeapi.PSATCluster
	// telemetry holds the last telemetry report of each node.
	telemetry map[string][]byte
}

// testAgentPath names the agent of every join token (so entries can be
// registered before it attests): spiffe://TD/ward/agent/node-1.
const testAgentPath = "node-1"

func newTestAuthority(t testing.TB, td spiffeid.TrustDomain, svidTTL, agentTTL time.Duration) *testAuthority {
	t.Helper()
	return newTestAuthorityWith(t, td, svidTTL, agentTTL, nil)
}

// newTestAuthorityWith lets adjust change the authority before it starts.
func newTestAuthorityWith(t testing.TB, td spiffeid.TrustDomain, svidTTL, agentTTL time.Duration, adjust func(*testAuthority)) *testAuthority {
	t.Helper()
	base := authoritytest.New(t, authoritytest.WithTrustDomain(td.Name()), authoritytest.WithCAConfig(func(c *ca.Config) {
		c.SVIDTTL, c.JWTSVIDTTL = svidTTL, svidTTL
	}))
	nk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, nk.Public(), nk)
	if err != nil {
		t.Fatal(err)
	}
	nodeCA, _ := x509.ParseCertificate(der)
	a := &testAuthority{Authority: base, t: t, ca: base.CA, nodeCA: nodeCA, nodeCAKey: nk, agentTTL: agentTTL,
		agents: []spiffeid.ID{spiffeid.RequireFromPath(td, registry.AgentIDPrefix+testAgentPath)}}
	if adjust != nil {
		adjust(a)
	}
	a.start("127.0.0.1:0")
	t.Cleanup(a.stop)
	return a
}

func (a *testAuthority) start(addr string) {
	a.t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(a.nodeCA)
	srv, err := nodeapi.New(nodeapi.Config{CA: a.CA, Registry: a.Registry, Audit: a.Authority, X509PopRoots: roots, PSATClusters: a.psat,
		AgentSVIDTTL: a.agentTTL, AuditLog: &a.audit, FederatedBundles: func(names []string) map[string][]byte {
			a.mu.Lock()
			f := a.federated
			a.mu.Unlock()
			if f == nil {
				return nil
			}
			return f(names)
		}, TelemetryInterval: time.Second, Telemetry: func(node string, b []byte) error {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.telemetry == nil {
				a.telemetry = map[string][]byte{}
			}
			a.telemetry[node] = b
			return nil
		}})
	if err != nil {
		a.t.Fatal(err)
	}
	var l net.Listener
	for i := 0; ; i++ {
		if l, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond) // the old listener's port is being released
	}
	if err != nil {
		a.t.Fatal(err)
	}
	a.addr = l.Addr().String()
	go srv.Serve(l)
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
}

func (a *testAuthority) stop() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

func (a *testAuthority) restart() { a.start(a.addr) }

// count is how often method was called: Sync by the syncs that reached the
// service, the others by their audit events (granted or refused).
func (a *testAuthority) count(method string) int {
	op := map[string]string{"Attest": "agent.attest", "RenewAgent": "agent.renew", "SignX509SVIDs": "svid.x509.sign", "SignJWTSVID": "svid.jwt.sign"}[method]
	switch {
	case method == "Sync":
		return a.audit.Asked() // Sync asks for the audit checkpoint once
	case op == "":
		a.t.Fatalf("count: unknown method %s", method)
	}
	return len(a.Events(op))
}

func (a *testAuthority) joinToken() string { return a.JoinToken(a.t, testAgentPath) }

// addEntry registers path for the callers with selectors, under every
// agent of this authority (the join-token agent and each x509pop node).
func (a *testAuthority) addEntry(path string, selectors ...string) {
	a.t.Helper()
	a.addEntryFederated(path, nil, selectors...)
}

// addEntryFederated registers path for every agent, federating with tds.
func (a *testAuthority) addEntryFederated(path string, tds []string, selectors ...string) {
	a.t.Helper()
	sels, err := attest.ParseSelectors(selectors)
	if err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	agents := append([]spiffeid.ID(nil), a.agents...)
	a.mu.Unlock()
	for _, agent := range agents {
		if _, err := a.Registry.CreateEntry(context.Background(), registry.Entry{SPIFFEID: a.ID(path).String(), ParentID: agent.String(), Selectors: sels, FederatesWith: tds}); err != nil {
			a.t.Fatal(err)
		}
	}
}

// removeEntries deletes every entry.
func (a *testAuthority) removeEntries() {
	a.t.Helper()
	ctx := context.Background()
	es, err := a.Registry.ListEntries(ctx, registry.ListFilter{})
	if err != nil {
		a.t.Fatal(err)
	}
	for _, e := range es {
		if err := a.Registry.DeleteEntry(ctx, e.ID); err != nil {
			a.t.Fatal(err)
		}
	}
}

func (a *testAuthority) evict(id spiffeid.ID) {
	a.t.Helper()
	if _, _, err := a.Registry.EvictAgent(context.Background(), id, nil); err != nil {
		a.t.Fatal(err)
	}
}

// setAuditLog makes Sync carry l's checkpoint and consistency proofs.
func (a *testAuthority) setAuditLog(l *authoritytest.AuditLog) { a.audit.Set(l) }

// nodeCert issues an x509pop node certificate and key (PEM files in dir);
// entries added afterwards are registered for its agent too.
func (a *testAuthority) nodeCert(dir string) (certPath, keyPath string) {
	a.t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node-1"},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.nodeCA, k.Public(), a.nodeCAKey)
	if err != nil {
		a.t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	node := nodeapi.X509PopAgentID(a.TD, leaf)
	ctx := context.Background()
	es, err := a.Registry.ListEntries(ctx, registry.ListFilter{ParentID: a.agents[0].String()})
	if err != nil {
		a.t.Fatal(err)
	}
	for _, e := range es {
		if _, err := a.Registry.CreateEntry(ctx, registry.Entry{SPIFFEID: e.SPIFFEID, ParentID: node.String(), Selectors: e.Selectors}); err != nil {
			a.t.Fatal(err)
		}
	}
	a.mu.Lock()
	a.agents = append(a.agents, node)
	a.mu.Unlock()
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	certPath, keyPath = filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key")
	writePEM(a.t, certPath, "CERTIFICATE", der)
	writePEM(a.t, keyPath, "PRIVATE KEY", kd)
	return certPath, keyPath
}
