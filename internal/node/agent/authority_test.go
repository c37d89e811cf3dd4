package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/shared/x509pop"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

// testAuthority is a Node API server for the agent's in-package tests,
// backed by the real CA (internal/authority/ca on a bbolt store) and real mTLS. The
// production authority (internal/authority/nodeapi) is exercised end to end in
// test/e2e/identity_test.go.
type testAuthority struct {
	t    testing.TB
	td   spiffeid.TrustDomain
	ca   *ca.CA
	addr string
	// nodeCA signs x509pop node certificates.
	nodeCA    *x509.Certificate
	nodeCAKey *ecdsa.PrivateKey
	agentTTL  time.Duration

	mu      sync.Mutex
	tokens  map[string]bool // unused join tokens
	entries []*wardv1.Entry
	evicted map[spiffeid.ID]bool
	calls   map[string]int
	srv     *grpc.Server
	// auditLog, when set, adds its checkpoint and a consistency proof to
	// Sync responses as the authority does (checkpoint_test.go).
	auditLog nodeapi.AuditSource
	// refuseSyncs, while positive, makes Sync refuse the agent SVID
	// (Unauthenticated, as for a chain through a tainted CA key), once per
	// call.
	refuseSyncs int

	wardv1.UnimplementedNodeServer
}

func newTestAuthority(t testing.TB, td spiffeid.TrustDomain, svidTTL, agentTTL time.Duration) *testAuthority {
	t.Helper()
	c := authoritytest.New(t, authoritytest.WithTrustDomain(td.Name()), authoritytest.WithCAConfig(func(c *ca.Config) {
		c.SVIDTTL, c.JWTSVIDTTL = svidTTL, svidTTL
	})).CA
	nk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, nk.Public(), nk)
	if err != nil {
		t.Fatal(err)
	}
	nodeCA, _ := x509.ParseCertificate(der)
	a := &testAuthority{t: t, td: td, ca: c, nodeCA: nodeCA, nodeCAKey: nk, agentTTL: agentTTL,
		tokens: map[string]bool{}, evicted: map[spiffeid.ID]bool{}, calls: map[string]int{}}
	a.start("127.0.0.1:0")
	t.Cleanup(a.stop)
	return a
}

func (a *testAuthority) start(addr string) {
	a.t.Helper()
	serverKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := a.ca.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(a.td, "/ward/server"), PublicKey: serverKey.Public()})
	if err != nil {
		a.t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: serverKey, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // Attest only
			}
			b, err := a.ca.Bundle()
			if err != nil {
				return err
			}
			_, _, err = x509svid.ParseAndVerify(raw, b.X509Bundle())
			return err
		},
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
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)))
	wardv1.RegisterNodeServer(srv, a)
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go srv.Serve(l)
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

func (a *testAuthority) count(m string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[m]
}

func (a *testAuthority) joinToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	a.mu.Lock()
	a.tokens[tok] = true
	a.mu.Unlock()
	return tok
}

func (a *testAuthority) addEntry(id, parent, path string, selectors ...string) {
	e := &wardv1.Entry{Id: id, SpiffeId: spiffeid.RequireFromPath(a.td, path).String(), ParentId: parent, Revision: 1}
	for _, s := range selectors {
		typ, val, _ := cut(s)
		e.Selectors = append(e.Selectors, &wardv1.Selector{Type: typ, Value: val})
	}
	a.mu.Lock()
	a.entries = append(a.entries, e)
	a.mu.Unlock()
}

func cut(s string) (string, string, bool) {
	for i := range s {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func (a *testAuthority) evict(id spiffeid.ID) {
	a.mu.Lock()
	a.evicted[id] = true
	a.mu.Unlock()
}

// nodeCert issues an x509pop node certificate and key (PEM files in dir).
func (a *testAuthority) nodeCert(dir string) (certPath, keyPath string) {
	a.t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node-1"},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.nodeCA, k.Public(), a.nodeCAKey)
	if err != nil {
		a.t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	certPath, keyPath = filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key")
	writePEM(a.t, certPath, "CERTIFICATE", der)
	writePEM(a.t, keyPath, "PRIVATE KEY", kd)
	return certPath, keyPath
}

func (a *testAuthority) callerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "agent SVID required")
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error())
	}
	a.mu.Lock()
	ev := a.evicted[id]
	a.mu.Unlock()
	if ev {
		return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "agent %s was evicted; attest again", id)
	}
	return id, nil
}

func (a *testAuthority) note(m string) {
	a.mu.Lock()
	a.calls[m]++
	a.mu.Unlock()
}

func (a *testAuthority) agentSVID(id spiffeid.ID, csrDER []byte) (*wardv1.AgentSVID, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil || csr.CheckSignature() != nil {
		return nil, status.Error(codes.InvalidArgument, "bad CSR")
	}
	chain, err := a.ca.SignX509SVID(context.Background(), ca.SVIDRequest{ID: id, PublicKey: csr.PublicKey, TTL: a.agentTTL})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	b, _ := a.ca.Bundle()
	doc, _ := b.Marshal()
	out := &wardv1.AgentSVID{SpiffeId: id.String(), BundleSpiffeJson: doc}
	for _, c := range chain {
		out.Chain = append(out.Chain, c.Raw)
	}
	return out, nil
}

func (a *testAuthority) Attest(stream wardv1.Node_AttestServer) error {
	a.note("Attest")
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	var id spiffeid.ID
	switch {
	case req.GetJoinToken() != nil:
		tok := req.GetJoinToken().GetToken()
		a.mu.Lock()
		ok := a.tokens[tok]
		delete(a.tokens, tok)
		a.mu.Unlock()
		if !ok {
			return status.Error(codes.PermissionDenied, "join token unknown or spent")
		}
		id = spiffeid.RequireFromPath(a.td, "/ward/agent/join_token/"+tok[:8])
	case req.GetX509Pop() != nil:
		chain := req.GetX509Pop().GetChain()
		leaf, err := x509.ParseCertificate(chain[0])
		if err != nil {
			return status.Error(codes.InvalidArgument, "bad node certificate")
		}
		pool := x509.NewCertPool()
		pool.AddCert(a.nodeCA)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return status.Error(codes.PermissionDenied, "node certificate does not chain to the node CA")
		}
		nonce := make([]byte, 32)
		rand.Read(nonce)
		if err := stream.Send(&wardv1.AttestResponse{Step: &wardv1.AttestResponse_X509PopChallenge{X509PopChallenge: nonce}}); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := x509pop.Verify(leaf.PublicKey, nonce, resp.GetX509PopChallengeSignature()); err != nil {
			return status.Error(codes.PermissionDenied, "x509pop challenge signature does not verify")
		}
		fp := sha256.Sum256(leaf.Raw)
		id = spiffeid.RequireFromPath(a.td, "/ward/agent/x509pop/"+hex.EncodeToString(fp[:8]))
		a.mu.Lock()
		delete(a.evicted, id) // a fresh attestation lifts an eviction
		a.mu.Unlock()
	default:
		return status.Error(codes.InvalidArgument, "no attestation")
	}
	svid, err := a.agentSVID(id, req.GetCsr())
	if err != nil {
		return err
	}
	return stream.Send(&wardv1.AttestResponse{Step: &wardv1.AttestResponse_Svid{Svid: svid}})
}

func (a *testAuthority) RenewAgent(ctx context.Context, req *wardv1.RenewAgentRequest) (*wardv1.AgentSVID, error) {
	a.note("RenewAgent")
	id, err := a.callerID(ctx)
	if err != nil {
		return nil, err
	}
	return a.agentSVID(id, req.GetCsr())
}

func (a *testAuthority) entriesOf(id spiffeid.ID) []*wardv1.Entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*wardv1.Entry
	for _, e := range a.entries {
		if e.ParentId == id.String() || e.ParentId == "*" {
			out = append(out, e)
		}
	}
	return out
}

func (a *testAuthority) Sync(ctx context.Context, req *wardv1.SyncRequest) (*wardv1.SyncResponse, error) {
	a.note("Sync")
	id, err := a.callerID(ctx)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	refuse := a.refuseSyncs > 0
	if refuse {
		a.refuseSyncs--
	}
	a.mu.Unlock()
	if refuse {
		return nil, status.Error(codes.Unauthenticated, "agent SVID chains to a tainted CA key; renew it")
	}
	b, _ := a.ca.Bundle()
	doc, _ := b.Marshal()
	resp := &wardv1.SyncResponse{Entries: a.entriesOf(id), BundleSpiffeJson: doc, BundleSequence: a.ca.State().BundleSequence,
		TaintedKeyIds: a.ca.TaintedKeyIDs()}
	a.mu.Lock()
	src := a.auditLog
	a.mu.Unlock()
	if src != nil {
		addAuditCheckpoint(a.t, ctx, src, req.GetAuditTreeSize(), resp)
	}
	return resp, nil
}

func (a *testAuthority) SignX509SVIDs(ctx context.Context, req *wardv1.SignX509SVIDsRequest) (*wardv1.SignX509SVIDsResponse, error) {
	a.note("SignX509SVIDs")
	id, err := a.callerID(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]*wardv1.Entry{}
	for _, e := range a.entriesOf(id) {
		byID[e.Id] = e
	}
	resp := &wardv1.SignX509SVIDsResponse{}
	for _, p := range req.GetParams() {
		r := &wardv1.X509SVIDResult{EntryId: p.GetEntryId()}
		resp.Results = append(resp.Results, r)
		e := byID[p.GetEntryId()]
		csr, err := x509.ParseCertificateRequest(p.GetCsr())
		if e == nil || err != nil || csr.CheckSignature() != nil {
			r.Error = &wardv1.ItemError{Code: "NotFound", Message: "no such entry for this agent, or bad CSR"}
			continue
		}
		chain, err := a.ca.SignX509SVID(ctx, ca.SVIDRequest{ID: spiffeid.RequireFromString(e.SpiffeId), PublicKey: csr.PublicKey,
			TTL: time.Duration(e.TtlSeconds) * time.Second, DNSNames: e.DnsNames})
		if err != nil {
			r.Error = &wardv1.ItemError{Code: "Internal", Message: err.Error()}
			continue
		}
		for _, c := range chain {
			r.Chain = append(r.Chain, c.Raw)
		}
		r.Expires = timestamppb.New(chain[0].NotAfter)
	}
	return resp, nil
}

func (a *testAuthority) SignJWTSVID(ctx context.Context, req *wardv1.SignJWTSVIDRequest) (*wardv1.SignJWTSVIDResponse, error) {
	a.note("SignJWTSVID")
	id, err := a.callerID(ctx)
	if err != nil {
		return nil, err
	}
	for _, e := range a.entriesOf(id) {
		if e.Id == req.GetEntryId() {
			j, err := a.ca.SignJWTSVID(ctx, spiffeid.RequireFromString(e.SpiffeId), req.GetAudience(), time.Duration(req.GetTtlSeconds())*time.Second)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			return &wardv1.SignJWTSVIDResponse{Token: j.Token, Expires: timestamppb.New(j.Expiry)}, nil
		}
	}
	return nil, status.Error(codes.NotFound, fmt.Sprintf("entry %s", req.GetEntryId()))
}
