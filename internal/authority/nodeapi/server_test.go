package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
	"github.com/wardproject/ward/internal/testutil/clock"
)

var testTD = spiffeid.RequireTrustDomainFromString("node.example.org")

type harness struct {
	srv       *Server
	ca        *ca.CA
	reg       *registry.Registry
	addr      string
	auditDown atomic.Bool
	clock     *clock.Fake
	auth      *authoritytest.Authority
	anonOnce  sync.Once
	anon      wardv1.NodeClient
}

func newHarness(t *testing.T) *harness { t.Helper(); return newHarnessWith(t, nil) }

// newHarnessWith lets a test adjust the Config (audit source, limits)
// before the server starts.
func newHarnessWith(t testing.TB, adjust func(*Config)) *harness {
	t.Helper()
	return newHarnessMounting(t, adjust, nil, nil)
}

// newHarnessMounting serves kmsSrv and policySrv in place of the services
// the Config asks for, when either is set (to test authentication apart
// from what the services decide); opts adjust the authority (registry
// limits).
func newHarnessMounting(t testing.TB, adjust func(*Config), kmsSrv wardv1.KMSServer, policySrv wardv1.PolicyDistributionServer, opts ...authoritytest.Option) *harness {
	t.Helper()
	h := &harness{clock: clock.Running()}
	auth := authoritytest.New(t, append([]authoritytest.Option{authoritytest.WithTrustDomain(testTD.Name()), authoritytest.WithClock(h.clock.Now),
		authoritytest.WithAuditHook(func(context.Context, audit.Event) error {
			if h.auditDown.Load() {
				return errors.New("audit log down")
			}
			return nil
		})}, opts...)...)
	h.ca, h.reg, h.auth = auth.CA, auth.Registry, auth
	cfg := Config{CA: h.ca, Registry: h.reg, Audit: auth, Clock: h.clock.Now, DNSNames: []string{"ward.example.org"}}
	if adjust != nil {
		adjust(&cfg)
	}
	var err error
	h.srv, err = newServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if kmsSrv != nil || policySrv != nil {
		h.srv.register(kmsSrv, policySrv)
	} else {
		h.srv.register(h.srv.services())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go h.srv.Serve(ln)
	t.Cleanup(h.srv.Stop)
	h.addr = ln.Addr().String()
	return h
}

func (h *harness) client(t testing.TB, svid *x509svid.SVID) wardv1.NodeClient {
	t.Helper()
	return wardv1.NewNodeClient(h.conn(t, svid))
}

// conn dials the Node API, with svid as client certificate unless nil.
func (h *harness) conn(t testing.TB, svid *x509svid.SVID) *grpc.ClientConn {
	t.Helper()
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	var tc *tls.Config
	if svid == nil {
		tc = tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeID(ServerID(testTD)))
	} else {
		tc = tlsconfig.MTLSClientConfig(svid, b, tlsconfig.AuthorizeID(ServerID(testTD)))
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func csr(t testing.TB) ([]byte, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func svidOf(t testing.TB, chain [][]byte, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	s, err := x509svid.ParseRaw(concat(chain), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func concat(bs [][]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func mustPKCS8(t testing.TB, k *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (h *harness) token(t testing.TB) string {
	t.Helper()
	tok, err := h.reg.CreateJoinToken(context.Background(), time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func (h *harness) attest(t testing.TB, token string) (*x509svid.SVID, error) {
	t.Helper()
	stream, err := h.client(t, nil).Attest(context.Background())
	if err != nil {
		return nil, err
	}
	der, key := csr(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: der, Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: token}}}); err != nil {
		return nil, err
	}
	r, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return svidOf(t, r.GetSvid().GetChain(), key), nil
}

func TestServerCertificateRenewal(t *testing.T) {
	h := newHarness(t)
	c1, err := h.srv.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := x509svid.IDFromCert(c1.Leaf); id != ServerID(testTD) || c1.Leaf.DNSNames[0] != "ward.example.org" {
		t.Fatalf("server certificate %s %v", id, c1.Leaf.DNSNames)
	}
	if c, _ := h.srv.certificate(); c != c1 {
		t.Fatal("a fresh certificate was replaced")
	}
	life := c1.Leaf.NotAfter.Sub(c1.Leaf.NotBefore)
	h.clock.Advance(life/2 + time.Second)
	c2, _ := h.srv.certificate()
	if c2 == c1 || c2.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) == 0 {
		t.Fatal("not renewed past half life")
	}
	if err := h.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	c3, _ := h.srv.certificate()
	if c3 == c2 {
		t.Fatal("not re-issued after the intermediate rotated")
	}
	inter, _ := h.ca.ActiveIntermediate()
	if string(c3.Certificate[1]) != string(inter.Raw) {
		t.Fatal("new certificate is not signed by the active intermediate")
	}
}

func TestIssuanceFailsClosed(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	e, err := h.reg.CreateEntry(ctx, registry.Entry{SPIFFEID: "spiffe://node.example.org/w", ParentID: agent.ID.String(),
		Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	tok := h.token(t)
	node := h.client(t, agent)
	h.auditDown.Store(true)
	if _, err := h.attest(t, tok); status.Code(err) != codes.Unavailable {
		t.Fatalf("attest with audit down: %v", err)
	}
	der, _ := csr(t)
	if _, err := node.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der}); status.Code(err) != codes.Unavailable {
		t.Fatalf("renew with audit down: %v", err)
	}
	if r, err := node.SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: e.ID, Csr: der}}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("sign with audit down: %v %v", r, err)
	}
	if r, err := node.SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: e.ID, Audience: []string{"x"}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("JWT with audit down: %v %v", r, err)
	}
	h.auditDown.Store(false)
	if _, err := node.SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: e.ID, Csr: der}}}); err != nil {
		t.Fatal(err)
	}
}

func TestTaintedIntermediateForcesRenewal(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := h.ca.ActiveIntermediate()
	kid, _ := keyutil.CAKeyID(inter.PublicKey)
	if err := h.ca.Taint(ctx, kid); err != nil {
		t.Fatal(err)
	}
	node := h.client(t, agent)
	if _, err := node.Sync(ctx, &wardv1.SyncRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("sync with a tainted chain: %v", err)
	}
	der, key := csr(t)
	r, err := node.RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
	if err != nil {
		t.Fatalf("renew with a tainted chain: %v", err)
	}
	fresh := svidOf(t, r.Chain, key)
	if k, _ := keyutil.CAKeyID(fresh.Certificates[1].PublicKey); k == kid {
		t.Fatal("re-issued SVID chains to the tainted intermediate")
	}
	if _, err := h.client(t, fresh).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
}
