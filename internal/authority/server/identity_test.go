package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/shared/x509pop"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

const testTD = "test.example.org"

// testPKI is an operator CA for x509pop nodes.
type testPKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM bundle path
}

func newTestPKI(t testing.TB, dir, name string) *testPKI {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testPKI{cert: cert, key: key, file: file}
}

// node issues a node certificate and key.
func (p *testPKI) node(t testing.TB, cn string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// idEnv is a running authority with the Node API on loopback.
type idEnv struct {
	srv     *Server
	dir     string
	pki     *testPKI
	conn    *grpc.ClientConn
	entries wardv1.EntriesClient
	agents  wardv1.AgentsClient
	ca      wardv1.CAClient
	bundle  *spiffebundle.Bundle
}

func startIdentity(t testing.TB) *idEnv {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "a")
	pki := newTestPKI(t, root, "node-ca")
	cfg := baseConfig(dir)
	cfg.Identity = config.Identity{NodeAPIAddress: "127.0.0.1:0", X509PopCABundle: pki.file}
	srv, c := startB(t, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	conn := adminConn(t, srv)
	e := &idEnv{srv: srv, dir: root, pki: pki, conn: conn, entries: wardv1.NewEntriesClient(conn),
		agents: wardv1.NewAgentsClient(conn), ca: wardv1.NewCAClient(conn)}
	e.refreshBundle(t)
	return e
}

func (e *idEnv) refreshBundle(t testing.TB) {
	t.Helper()
	b, err := e.ca.GetBundle(context.Background(), &wardv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.bundle, err = spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(testTD), b.SpiffeJson)
	if err != nil {
		t.Fatal(err)
	}
}

func serverID() spiffeid.ID { return nodeapi.ServerID(spiffeid.RequireTrustDomainFromString(testTD)) }

// nodeClient dials the Node API: without a client certificate (to attest)
// when svid is nil, else with the agent SVID. The server must present
// spiffe://TD/ward/server chaining to the bundle.
func (e *idEnv) nodeClient(t testing.TB, svid *x509svid.SVID) wardv1.NodeClient {
	t.Helper()
	return wardv1.NewNodeClient(dialNode(t, e, svid, e.srv.NodeAPIAddress()))
}

// dialNode connects to the Node API at addr as nodeClient does.
func dialNode(t testing.TB, e *idEnv, svid *x509svid.SVID, addr string) *grpc.ClientConn {
	t.Helper()
	var tc *tls.Config
	if svid == nil {
		tc = tlsconfig.TLSClientConfig(e.bundle, tlsconfig.AuthorizeID(serverID()))
	} else {
		tc = tlsconfig.MTLSClientConfig(svid, e.bundle, tlsconfig.AuthorizeID(serverID()))
	}
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// adminConn is a raw gRPC connection to srv's admin socket.
func adminConn(t testing.TB, srv *Server) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(srv.AdminAddress(), grpc.WithTransportCredentials(local.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func newCSR(t testing.TB) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func toSVID(t testing.TB, chain [][]byte, key crypto.Signer) *x509svid.SVID {
	t.Helper()
	var certs []*x509.Certificate
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

// attestJoin attests with a join token and returns the agent SVID.
func (e *idEnv) attestJoin(t testing.TB, token string) (*x509svid.SVID, error) {
	t.Helper()
	stream, err := e.nodeClient(t, nil).Attest(context.Background())
	if err != nil {
		return nil, err
	}
	csr, key := newCSR(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: csr, Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: token}}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return toSVID(t, resp.GetSvid().GetChain(), key), nil
}

// attestX509Pop attests with a node certificate; sign answers the challenge.
func (e *idEnv) attestX509Pop(t testing.TB, chain [][]byte, sign func(nonce []byte) []byte) (*x509svid.SVID, error) {
	t.Helper()
	stream, err := e.nodeClient(t, nil).Attest(context.Background())
	if err != nil {
		return nil, err
	}
	csr, key := newCSR(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: csr, Step: &wardv1.AttestRequest_X509Pop{X509Pop: &wardv1.X509PopAttestation{Chain: chain}}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	nonce := resp.GetX509PopChallenge()
	if len(nonce) != x509pop.NonceSize {
		t.Fatalf("expected a %d-byte challenge, got %v", x509pop.NonceSize, resp)
	}
	if err := stream.Send(&wardv1.AttestRequest{Step: &wardv1.AttestRequest_X509PopChallengeSignature{X509PopChallengeSignature: sign(nonce)}}); err != nil {
		return nil, err
	}
	resp, err = stream.Recv()
	if err != nil {
		return nil, err
	}
	return toSVID(t, resp.GetSvid().GetChain(), key), nil
}

func (e *idEnv) token(t testing.TB, ttl time.Duration, path string) *wardv1.JoinToken {
	t.Helper()
	tok, err := e.agents.CreateJoinToken(context.Background(), &wardv1.CreateJoinTokenRequest{TtlSeconds: int64(ttl / time.Second), AgentPath: path})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *idEnv) joinAgent(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	svid, err := e.attestJoin(t, e.token(t, 10*time.Minute, path).Token)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func code(err error) codes.Code { return status.Code(err) }

// auditEvents returns every event in the log.
func (e *idEnv) auditEvents(t testing.TB) []audit.Event {
	t.Helper()
	st, err := e.srv.state()
	if err != nil {
		t.Fatal(err)
	}
	return authoritytest.ReadEvents(t, st.audit)
}

func TestJoinTokens(t *testing.T) {
	e := startIdentity(t)
	tok := e.token(t, 10*time.Minute, "")
	if len(tok.Token) < 32 || !strings.HasPrefix(tok.AgentId, "spiffe://"+testTD+"/ward/agent/join_token/") {
		t.Fatalf("bad token: %v", tok)
	}
	svid, err := e.attestJoin(t, tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != tok.AgentId {
		t.Fatalf("agent got %s, token promised %s", svid.ID, tok.AgentId)
	}
	if _, err := e.attestJoin(t, tok.Token); code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reused token: got %v, want PermissionDenied (already used)", err)
	}
	wrong := strings.Repeat("0", len(tok.Token))
	if _, err := e.attestJoin(t, wrong); code(err) != codes.PermissionDenied {
		t.Fatalf("wrong token: got %v, want PermissionDenied", err)
	}
	if _, err := e.attestJoin(t, "short"); code(err) != codes.PermissionDenied {
		t.Fatalf("malformed token: got %v, want PermissionDenied", err)
	}
	// The secret is in no audit event and nowhere in the raw store.
	for _, ev := range e.auditEvents(t) {
		for _, v := range ev.Fields {
			if strings.Contains(v, tok.Token) {
				t.Fatalf("token in audit event %+v", ev)
			}
		}
	}
	// A chosen agent path; bad paths are refused.
	named := e.token(t, time.Minute, "rack1/node-7")
	if named.AgentId != "spiffe://"+testTD+"/ward/agent/rack1/node-7" {
		t.Fatalf("agent path ignored: %s", named.AgentId)
	}
	for _, bad := range []struct {
		ttl  time.Duration
		path string
	}{{48 * time.Hour, ""}, {time.Minute, "x509pop/abc"}, {time.Minute, "a//b"}, {time.Minute, "bad path"}} {
		if _, err := e.agents.CreateJoinToken(context.Background(), &wardv1.CreateJoinTokenRequest{TtlSeconds: int64(bad.ttl / time.Second), AgentPath: bad.path}); code(err) != codes.InvalidArgument {
			t.Errorf("token ttl %s path %q: got %v, want InvalidArgument", bad.ttl, bad.path, err)
		}
	}
	// Concurrent redemption: exactly one agent wins.
	race := e.token(t, time.Minute, "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.attestJoin(t, race.Token); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d agents attested with one token", wins)
	}
}

func TestX509Pop(t *testing.T) {
	e := startIdentity(t)
	leaf, key := e.pki.node(t, "node-a.example.org")
	sign := func(k crypto.Signer) func([]byte) []byte {
		return func(n []byte) []byte {
			sig, err := x509pop.Sign(k, n)
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
	}
	svid, err := e.attestX509Pop(t, [][]byte{leaf}, sign(key))
	if err != nil {
		t.Fatal(err)
	}
	lc, _ := x509.ParseCertificate(leaf)
	if want := nodeapi.X509PopAgentID(spiffeid.RequireTrustDomainFromString(testTD), lc); svid.ID != want {
		t.Fatalf("agent ID %s, want %s", svid.ID, want)
	}
	agents, err := e.agents.ListAgents(context.Background(), &wardv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(agents.Agents) != 1 || agents.Agents[0].AttestationType != "x509pop" || agents.Agents[0].Serial != svid.Certificates[0].SerialNumber.Text(16) {
		t.Fatalf("agent record: %v", agents.Agents)
	}
	sels := map[string]bool{}
	for _, s := range agents.Agents[0].Selectors {
		sels[s.Type+":"+s.Value] = true
	}
	if !sels["x509pop:subject:cn:node-a.example.org"] {
		t.Fatalf("selectors lack the subject CN: %v", sels)
	}

	other := newTestPKI(t, e.dir, "rogue-ca")
	rogueLeaf, rogueKey := other.node(t, "rogue")
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases := []struct {
		name  string
		chain [][]byte
		sign  func([]byte) []byte
	}{
		{"wrong CA", [][]byte{rogueLeaf}, sign(rogueKey)},
		{"wrong key", [][]byte{leaf}, sign(otherKey)},
		{"garbage signature", [][]byte{leaf}, func([]byte) []byte { return []byte("not a signature") }},
		{"signature over another nonce", [][]byte{leaf}, func(n []byte) []byte { return sign(key)(make([]byte, len(n))) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A wrong CA is refused before any challenge is sent.
			_, err := e.attestX509Pop(t, tc.chain, tc.sign)
			if code(err) != codes.PermissionDenied {
				t.Fatalf("got %v, want PermissionDenied", err)
			}
		})
	}
	agents, _ = e.agents.ListAgents(context.Background(), &wardv1.ListAgentsRequest{})
	if len(agents.Agents) != 1 {
		t.Fatalf("failed attestations created agents: %v", agents.Agents)
	}
}

func TestNodeAPIEndToEnd(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	agentSVID := e.joinAgent(t, "node-1")
	otherSVID := e.joinAgent(t, "node-2")

	// Without a client certificate only Attest is allowed.
	anon := e.nodeClient(t, nil)
	if _, err := anon.Sync(ctx, &wardv1.SyncRequest{}); code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous Sync: got %v, want Unauthenticated", err)
	}

	// Renew: same ID, new serial recorded.
	node := e.nodeClient(t, agentSVID)
	csr, key := newCSR(t)
	renewed, err := node.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	rs := toSVID(t, renewed.Chain, key)
	if rs.ID != agentSVID.ID || rs.Certificates[0].SerialNumber.Cmp(agentSVID.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("renewal gave %s serial %s", rs.ID, rs.Certificates[0].SerialNumber)
	}
	node = e.nodeClient(t, rs)

	mk := func(path, parent string, sel string) *wardv1.Entry {
		en, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
			SpiffeId: "spiffe://" + testTD + path, ParentId: parent, TtlSeconds: 1800, DnsNames: []string{"svc.example.org"},
			Selectors: []*wardv1.Selector{{Type: "unix", Value: sel}}}})
		if err != nil {
			t.Fatal(err)
		}
		return en
	}
	mine := mk("/payments", agentSVID.ID.String(), "uid:1000")
	mk("/billing", agentSVID.ID.String(), "uid:1001")
	theirs := mk("/ledger", otherSVID.ID.String(), "uid:1000")

	sync, err := node.Sync(ctx, &wardv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sync.Entries) != 2 || sync.BundleSequence == 0 || len(sync.BundleSpiffeJson) == 0 {
		t.Fatalf("sync: %d entries, sequence %d", len(sync.Entries), sync.BundleSequence)
	}
	for _, en := range sync.Entries {
		if en.ParentId != agentSVID.ID.String() {
			t.Fatalf("sync returned another agent's entry %v", en)
		}
	}

	wcsr, wkey := newCSR(t)
	resp, err := node.SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{
		{EntryId: mine.Id, Csr: wcsr}, {EntryId: theirs.Id, Csr: wcsr}, {EntryId: strings.Repeat("ab", 16), Csr: wcsr}, {EntryId: mine.Id, Csr: []byte("junk")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r0 := resp.Results[0]
	if r0.Error != nil || len(r0.Chain) != 2 {
		t.Fatalf("own entry: %v", r0)
	}
	for i, want := range []string{"PermissionDenied", "PermissionDenied", "InvalidArgument"} {
		if r := resp.Results[i+1]; r.Error == nil || r.Error.Code != want || len(r.Chain) != 0 {
			t.Fatalf("result %d: %v, want %s", i+1, r, want)
		}
	}
	// The SVID verifies with go-spiffe against the bundle.
	id, _, err := x509svid.ParseAndVerify(r0.Chain, e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(r0.Chain[0])
	if id.String() != mine.SpiffeId || leaf.NotAfter.Sub(leaf.NotBefore) > 1800*time.Second+time.Minute || leaf.DNSNames[0] != "svc.example.org" {
		t.Fatalf("SVID %s, lifetime %s, dns %v", id, leaf.NotAfter.Sub(leaf.NotBefore), leaf.DNSNames)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(wkey.Public()) {
		t.Fatal("SVID is not for the CSR's key")
	}
	opensslVerify(t, e, r0.Chain)

	// JWT-SVIDs: own entry yes, another agent's no.
	jr, err := node.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: mine.Id, Audience: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jr.Token, e.bundle, []string{"db"}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: theirs.Id, Audience: []string{"db"}}); code(err) != codes.PermissionDenied {
		t.Fatalf("JWT for another agent's entry: got %v, want PermissionDenied", err)
	}

	// Issuance is audited: entry, agent, serial, expiry.
	var signed, attested, renewedEv bool
	for _, ev := range e.auditEvents(t) {
		switch ev.Operation {
		case "svid.x509.sign":
			if ev.Fields["entries"] == mine.Id && ev.Fields["agent_id"] == agentSVID.ID.String() &&
				ev.Fields["serials"] == leaf.SerialNumber.Text(16) && ev.Fields["expires"] != "" && ev.Count == 1 && ev.Actor == agentSVID.ID.String() {
				signed = true
			}
		case "agent.attest":
			attested = attested || ev.Result == audit.ResultOK && ev.Fields["serial"] == agentSVID.Certificates[0].SerialNumber.Text(16)
		case "agent.renew":
			renewedEv = renewedEv || ev.Fields["serial"] == rs.Certificates[0].SerialNumber.Text(16)
		}
	}
	if !signed || !attested || !renewedEv {
		t.Fatalf("issuance missing from the audit log: sign %v attest %v renew %v", signed, attested, renewedEv)
	}

	// The superseded agent SVID stays usable until it expires (connections
	// opened before a renewal), but a second renewal retires it.
	if _, err := e.nodeClient(t, agentSVID).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("previous SVID right after renewal: %v", err)
	}
	csr2, key2 := newCSR(t)
	again, err := node.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: csr2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.nodeClient(t, agentSVID).Sync(ctx, &wardv1.SyncRequest{}); code(err) != codes.PermissionDenied {
		t.Fatalf("SVID two renewals old: got %v, want PermissionDenied", err)
	}
	node = e.nodeClient(t, toSVID(t, again.Chain, key2))

	// Evict: renew, sync and sign all refused, on open connections too.
	if _, err := e.agents.EvictAgent(ctx, &wardv1.EvictAgentRequest{SpiffeId: agentSVID.ID.String()}); err != nil {
		t.Fatal(err)
	}
	csr3, _ := newCSR(t)
	if _, err := node.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: csr3}); code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "agent evicted: attest again") {
		t.Fatalf("evicted renew: got %v", err)
	}
	if _, err := node.Sync(ctx, &wardv1.SyncRequest{}); code(err) != codes.PermissionDenied {
		t.Fatalf("evicted sync: got %v", err)
	}
	if _, err := node.SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: mine.Id, Csr: wcsr}}}); code(err) != codes.PermissionDenied {
		t.Fatalf("evicted sign: got %v", err)
	}
	list, _ := e.agents.ListAgents(ctx, &wardv1.ListAgentsRequest{})
	for _, a := range list.Agents {
		if a.SpiffeId == agentSVID.ID.String() && !a.Evicted {
			t.Fatal("agent list does not show the eviction")
		}
	}
	// The other agent is unaffected; attesting again (new token, same
	// path) lifts the eviction.
	if _, err := e.nodeClient(t, otherSVID).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	back := e.joinAgent(t, "node-1")
	if _, err := e.nodeClient(t, back).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("re-attested agent: %v", err)
	}
}

func opensslVerify(t *testing.T, e *idEnv, chain [][]byte) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not installed; skipping openssl verify")
		return
	}
	b, err := e.ca.GetBundle(context.Background(), &wardv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	roots := write("bundle.pem", b.X509Pem)
	leaf := write("leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0]}))
	inter := write("inter.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[1]}))
	out, err := exec.Command("openssl", "verify", "-CAfile", roots, "-untrusted", inter, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	text, err := exec.Command("openssl", "x509", "-in", leaf, "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(string(text), "URI:spiffe://"+testTD+"/payments") {
		t.Fatalf("openssl x509 -text lacks the SPIFFE URI SAN: %v\n%s", err, text)
	}
}

func TestIdentitySealed(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	op := wardv1.NewOperatorClient(e.conn)
	if _, err := op.Seal(ctx, &wardv1.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	if a := e.srv.NodeAPIAddress(); a != "" {
		t.Fatalf("Node API still listed at %s while sealed", a)
	}
	calls := map[string]error{}
	_, calls["ListEntries"] = e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	_, calls["CreateJoinToken"] = e.agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{})
	_, calls["ShowCA"] = e.ca.ShowCA(ctx, &wardv1.ShowCARequest{})
	_, calls["GetBundle"] = e.ca.GetBundle(ctx, &wardv1.GetBundleRequest{})
	for name, err := range calls {
		if code(err) != codes.FailedPrecondition {
			t.Errorf("%s while sealed: got %v, want FailedPrecondition", name, err)
		}
	}
}

// TestNodeAPIAfterRootRotation: the first unseal initialises the CA (and
// audits it); after the CA admin's rotations and a taint of the active
// intermediate (see adminapi's TestCAAdmin), the Node API presents a
// certificate chaining to the new root, and agents with the new bundle
// still connect.
func TestNodeAPIAfterRootRotation(t *testing.T) {
	e := startIdentity(t)
	ctx := context.Background()
	inits := 0
	for _, ev := range e.auditEvents(t) {
		if ev.Operation+"/"+ev.Result == "ca.init/ok" {
			inits++
		}
	}
	if inits == 0 {
		t.Error("audit log lacks ca.init/ok after the first unseal")
	}
	activeInter := authoritytest.ActiveIntermediate(t, e.ca)
	if _, err := e.ca.RotateCA(ctx, &wardv1.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ca.RotateCA(ctx, &wardv1.RotateCARequest{Root: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: activeInter}); err != nil {
		t.Fatal(err)
	}
	e.refreshBundle(t)
	if _, err := e.attestJoin(t, e.token(t, time.Minute, "").Token); err != nil {
		t.Fatalf("attest after root rotation: %v", err)
	}
}

// BenchmarkNodeSignX509SVIDs measures SVID issuance through the real mTLS
// Node API: batches of 100 CSRs per call (the agent's normal pattern),
// including entry lookup, authorization and the audit event.
func BenchmarkNodeSignX509SVIDs(b *testing.B) {
	e := startIdentity(b)
	ctx := context.Background()
	agent := e.joinAgent(b, "bench")
	node := e.nodeClient(b, agent)
	const batch = 100
	var params []*wardv1.X509SVIDParams
	for i := range batch {
		en, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: &wardv1.Entry{
			SpiffeId: "spiffe://" + testTD + "/w/" + string(rune('a'+i%26)) + big.NewInt(int64(i)).String(), ParentId: agent.ID.String(),
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + big.NewInt(int64(i)).String()}}}})
		if err != nil {
			b.Fatal(err)
		}
		csr, _ := newCSR(b)
		params = append(params, &wardv1.X509SVIDParams{EntryId: en.Id, Csr: csr})
	}
	req := &wardv1.SignX509SVIDsRequest{Params: params}
	b.ResetTimer()
	for b.Loop() {
		r, err := node.SignX509SVIDs(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if r.Results[batch-1].Error != nil {
			b.Fatal(r.Results[batch-1].Error)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "SVIDs/s")
}
