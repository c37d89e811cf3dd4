package nodeapi

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
)

// fakeKMS stands in for the authority's workload KMS: it answers every
// method, but only to a call that authenticate let through as a workload
// (as the real one, which decides policy on WorkloadFrom).
type fakeKMS struct {
	wardv1.UnimplementedKMSServer
}

func workloadOK(ctx context.Context) error {
	if WorkloadFrom(ctx).IsZero() {
		return status.Error(codes.Internal, "test: handler reached without a workload identity")
	}
	return nil
}

func (fakeKMS) Encrypt(ctx context.Context, _ *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	return &wardv1.EncryptResponse{}, workloadOK(ctx)
}
func (fakeKMS) Decrypt(ctx context.Context, _ *wardv1.DecryptRequest) (*wardv1.DecryptResponse, error) {
	return &wardv1.DecryptResponse{}, workloadOK(ctx)
}
func (fakeKMS) GenerateDataKey(ctx context.Context, _ *wardv1.GenerateDataKeyRequest) (*wardv1.GenerateDataKeyResponse, error) {
	return &wardv1.GenerateDataKeyResponse{}, workloadOK(ctx)
}
func (fakeKMS) Rewrap(ctx context.Context, _ *wardv1.RewrapRequest) (*wardv1.RewrapResponse, error) {
	return &wardv1.RewrapResponse{}, workloadOK(ctx)
}
func (fakeKMS) BatchEncrypt(ctx context.Context, _ *wardv1.BatchEncryptRequest) (*wardv1.BatchEncryptResponse, error) {
	return &wardv1.BatchEncryptResponse{}, workloadOK(ctx)
}
func (fakeKMS) BatchDecrypt(ctx context.Context, _ *wardv1.BatchDecryptRequest) (*wardv1.BatchDecryptResponse, error) {
	return &wardv1.BatchDecryptResponse{}, workloadOK(ctx)
}
func (fakeKMS) BatchGenerateDataKey(ctx context.Context, _ *wardv1.BatchGenerateDataKeyRequest) (*wardv1.BatchGenerateDataKeyResponse, error) {
	return &wardv1.BatchGenerateDataKeyResponse{}, workloadOK(ctx)
}
func (fakeKMS) BatchRewrap(ctx context.Context, _ *wardv1.BatchRewrapRequest) (*wardv1.BatchRewrapResponse, error) {
	return &wardv1.BatchRewrapResponse{}, workloadOK(ctx)
}

// fakePolicy streams one policy version at once, then one more each time
// the test sends on more.
type fakePolicy struct {
	wardv1.UnimplementedPolicyDistributionServer
	more chan struct{}
}

func (f fakePolicy) WatchPolicy(_ *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	if agentFrom(ss.Context()).IsZero() {
		return status.Error(codes.Internal, "test: WatchPolicy reached without an agent identity")
	}
	for n := uint64(1); ; n++ {
		if err := ss.Send(&wardv1.PolicyVersion{Version: n}); err != nil {
			return err
		}
		select {
		case <-f.more:
		case <-ss.Context().Done():
			return nil
		}
	}
}

func isKMS(m string) bool { return strings.HasPrefix(m, "/ward.v1.KMS/") }

// newAuthHarness is a Node API with stand-ins for the workload KMS and
// policy distribution, mounted where the real ones are.
func newAuthHarness(t testing.TB) (*harness, fakePolicy) {
	fp := fakePolicy{more: make(chan struct{})}
	telemetryOK := func(c *Config) { c.Telemetry = func(string, []byte) error { return nil } }
	return newHarnessMounting(t, telemetryOK, fakeKMS{}, fp), fp
}

// caSigned has the CA sign an SVID for any path, as it signs the server's
// own (spiffe://TD/ward/server) or a workload's: the CA itself does not
// care about the namespace, so the Node API must.
func (h *harness) caSigned(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	_, key := csr(t)
	chain, err := h.ca.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(testTD, path), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return svidOf(t, chainDER(chain), key)
}

// caller is one identity of the table, with an entry registered under it
// (so SignJWTSVID has something to sign when authentication passes).
type caller struct {
	svid  *x509svid.SVID
	entry string
}

func (h *harness) agentCaller(t testing.TB) caller {
	t.Helper()
	svid, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	e, err := h.reg.CreateEntry(context.Background(), registry.Entry{SPIFFEID: "spiffe://" + testTD.Name() + "/app/" + strings.ReplaceAll(svid.ID.Path(), "/", "_"),
		ParentID: svid.ID.String(), Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	return caller{svid, e.ID}
}

type call struct {
	method string
	do     func(ctx context.Context, conn *grpc.ClientConn, c caller) error
}

func nodeCalls(t testing.TB) []call {
	der, _ := csr(t)
	node := func(conn *grpc.ClientConn) wardv1.NodeClient { return wardv1.NewNodeClient(conn) }
	kms := func(conn *grpc.ClientConn) wardv1.KMSClient { return wardv1.NewKMSClient(conn) }
	return []call{
		{"RenewAgent", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := node(conn).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
			return err
		}},
		{"Sync", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := node(conn).Sync(ctx, &wardv1.SyncRequest{})
			return err
		}},
		{"SignX509SVIDs", func(ctx context.Context, conn *grpc.ClientConn, c caller) error {
			_, err := node(conn).SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: c.entry, Csr: der}}})
			return err
		}},
		{"SignJWTSVID", func(ctx context.Context, conn *grpc.ClientConn, c caller) error {
			_, err := node(conn).SignJWTSVID(ctx, &wardv1.SignJWTSVIDRequest{EntryId: c.entry, Audience: []string{"a"}})
			return err
		}},
		{"WatchPolicy", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			ss, err := wardv1.NewPolicyDistributionClient(conn).WatchPolicy(ctx, &wardv1.WatchPolicyRequest{})
			if err != nil {
				return err
			}
			_, err = ss.Recv()
			return err
		}},
		{"RegisterTunnel", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			// A random /32 each time: every call is another agent's.
			var b [3]byte
			rand.Read(b[:])
			_, err := wardv1.NewNodeNetworkClient(conn).RegisterTunnel(ctx, &wardv1.RegisterTunnelRequest{PublicKey: wgKey(t),
				ListenPort: 51820, AllowedIps: []string{fmt.Sprintf("10.%d.%d.%d/32", b[0], b[1], b[2])}})
			return err
		}},
		{"WatchPeers", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			ss, err := wardv1.NewNodeNetworkClient(conn).WatchPeers(ctx, &wardv1.WatchPeersRequest{})
			if err != nil {
				return err
			}
			_, err = ss.Recv()
			return err
		}},
		{"Telemetry", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := wardv1.NewTelemetryClient(conn).Report(ctx, &wardv1.TelemetryReport{Report: []byte(`{"agent":{"kind":"agent"}}`)})
			return err
		}},
		{"KMS/Encrypt", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).Encrypt(ctx, &wardv1.EncryptRequest{Key: "k", Plaintext: []byte("x")})
			return err
		}},
		{"KMS/Decrypt", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).Decrypt(ctx, &wardv1.DecryptRequest{})
			return err
		}},
		{"KMS/GenerateDataKey", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: "k"})
			return err
		}},
		{"KMS/Rewrap", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).Rewrap(ctx, &wardv1.RewrapRequest{})
			return err
		}},
		{"KMS/BatchEncrypt", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).BatchEncrypt(ctx, &wardv1.BatchEncryptRequest{Key: "k"})
			return err
		}},
		{"KMS/BatchDecrypt", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).BatchDecrypt(ctx, &wardv1.BatchDecryptRequest{})
			return err
		}},
		{"KMS/BatchGenerateDataKey", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).BatchGenerateDataKey(ctx, &wardv1.BatchGenerateDataKeyRequest{Key: "k"})
			return err
		}},
		{"KMS/BatchRewrap", func(ctx context.Context, conn *grpc.ClientConn, _ caller) error {
			_, err := kms(conn).BatchRewrap(ctx, &wardv1.BatchRewrapRequest{})
			return err
		}},
	}
}

// TestEveryMethodRefusesStaleAndReservedSVIDs runs the red team's attack on
// every Node API method: an evicted agent's SVID, an agent SVID superseded
// by renewal, and SVIDs in the reserved /ward/ namespace that are not a
// registered agent's (the server's own ID, another /ward/ path, an agent ID
// with no record) are all refused by authenticate before any handler runs;
// a current agent reaches the agent methods but not the KMS (it is no
// workload), a workload reaches the KMS and nothing else.
func TestEveryMethodRefusesStaleAndReservedSVIDs(t *testing.T) {
	h, _ := newAuthHarness(t)
	ctx := context.Background()
	calls := nodeCalls(t)
	type want struct {
		code codes.Code // codes.OK: the call succeeds
		msg  string
	}
	refusedAll := func(c codes.Code, msg string) func(string) want {
		return func(string) want { return want{c, msg} }
	}
	for _, tc := range []struct {
		name   string
		caller func(t *testing.T) caller
		want   func(method string) want
	}{
		{"evicted agent", func(t *testing.T) caller {
			c := h.agentCaller(t)
			if _, _, err := h.reg.EvictAgent(ctx, c.svid.ID, nil); err != nil {
				t.Fatal(err)
			}
			return c
		}, refusedAll(codes.PermissionDenied, "evicted")},
		{"superseded agent SVID", func(t *testing.T) caller {
			c := h.agentCaller(t)
			svid := c.svid
			// Two renewals: the first SVID is neither current nor the
			// previous one (which stays valid until it expires).
			for range 2 {
				der, key := csr(t)
				r, err := h.client(t, svid).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
				if err != nil {
					t.Fatal(err)
				}
				svid = svidOf(t, r.Chain, key)
			}
			return caller{c.svid, c.entry}
		}, refusedAll(codes.PermissionDenied, "no longer its current one")},
		{"server ID signed by the CA", func(t *testing.T) caller {
			return caller{svid: h.caSigned(t, "/ward/server")}
		}, refusedAll(codes.PermissionDenied, "reserved /ward/ namespace")},
		{"other /ward/ path signed by the CA", func(t *testing.T) caller {
			return caller{svid: h.caSigned(t, "/ward/kms-plugin")}
		}, refusedAll(codes.PermissionDenied, "reserved /ward/ namespace")},
		{"/ward path itself", func(t *testing.T) caller {
			return caller{svid: h.caSigned(t, "/ward")}
		}, refusedAll(codes.PermissionDenied, "reserved /ward/ namespace")},
		{"unregistered agent ID signed by the CA", func(t *testing.T) caller {
			return caller{svid: h.caSigned(t, "/ward/agent/join_token/forged")}
		}, refusedAll(codes.PermissionDenied, "not registered")},
		{"current agent", func(t *testing.T) caller { return h.agentCaller(t) }, func(m string) want {
			if isKMS("/ward.v1." + m) {
				return want{codes.PermissionDenied, "not a workload identity"}
			}
			return want{codes.OK, ""}
		}},
		{"workload", func(t *testing.T) caller { return caller{svid: h.caSigned(t, "/app/payments")} }, func(m string) want {
			if isKMS("/ward.v1." + m) {
				return want{codes.OK, ""}
			}
			return want{codes.Unauthenticated, "not an agent ID"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range calls {
				t.Run(c.method, func(t *testing.T) {
					who := tc.caller(t)
					err := c.do(ctx, h.conn(t, who.svid), who)
					w := tc.want(c.method)
					if status.Code(err) != w.code || w.code != codes.OK && !strings.Contains(status.Convert(err).Message(), w.msg) {
						t.Fatalf("%s as %s: got %v; want %v %q", c.method, who.svid.ID, err, w.code, w.msg)
					}
				})
			}
		})
	}
}

// TestOpenStreamEndsOnEviction: a WatchPolicy stream opened while the
// agent was current stops delivering once the agent is evicted.
func TestOpenStreamEndsOnEviction(t *testing.T) {
	h, fp := newAuthHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := h.agentCaller(t)
	ss, err := wardv1.NewPolicyDistributionClient(h.conn(t, c.svid)).WatchPolicy(ctx, &wardv1.WatchPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ss.Recv(); err != nil || v.Version != 1 {
		t.Fatalf("first version: %v %v", v, err)
	}
	fp.more <- struct{}{}
	if v, err := ss.Recv(); err != nil || v.Version != 2 {
		t.Fatalf("second version while current: %v %v", v, err)
	}
	if _, _, err := h.reg.EvictAgent(ctx, c.svid.ID, nil); err != nil {
		t.Fatal(err)
	}
	fp.more <- struct{}{}
	v, err := ss.Recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "evicted") {
		t.Fatalf("after eviction the stream delivered %v, %v; want it ended as evicted", v, err)
	}
}
