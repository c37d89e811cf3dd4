package adminapi

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

const testTD = "test.example.org"

// authority stands in for the server: real unsealed services over one
// in-memory store, and a lifecycle that only flips a flag.
type authority struct {
	mu     sync.Mutex
	sealed bool
	sv     Services
	store  store.Store
}

var errSealed = status.Error(codes.FailedPrecondition, "the authority is sealed: unseal it with `ward operator unseal`")

func (a *authority) Services() (*Services, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sealed {
		return nil, errSealed
	}
	sv := a.sv
	return &sv, nil
}

func (a *authority) Status(context.Context) (Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Status{Status: seal.Status{Initialized: true, Sealed: a.sealed, Type: "test"}, TrustDomain: testTD}, nil
}

func (a *authority) Init(context.Context, seal.InitOptions) ([]string, error) {
	return nil, status.Error(codes.FailedPrecondition, "already initialised")
}

func (a *authority) Unseal(context.Context, string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sealed = false
	return nil
}

func (a *authority) ResetUnseal(context.Context) {}

func (a *authority) Seal(context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sealed = true
	return nil
}

// setPolicy swaps the policy store the services hand out.
func (a *authority) setPolicy(ps *policystore.Store) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sv.Policy = ps
}

// env is the admin API over an unsealed test authority, with clients.
type env struct {
	auth     *authority
	recorder audit.Recorder
	conn     *grpc.ClientConn
	entries  wardv1.EntriesClient
	agents   wardv1.AgentsClient
	ca       wardv1.CAClient
	policy   wardv1.PolicyClient
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ta := authoritytest.New(t, authoritytest.WithTrustDomain(testTD), authoritytest.WithAuditLog(), authoritytest.WithKMS(), authoritytest.WithPolicy())
	a := &authority{store: ta.Store, sv: Services{KMS: ta.KMS, Audit: ta.AuditLog, Hasher: ta.Hasher, Recorder: ta, CA: ta.CA, Registry: ta.Registry,
		Policy: ta.Policy}}
	rec := audit.Recorder(ta)

	ln := bufconn.Listen(1 << 20)
	caller := reqctx.Caller{Actor: "admin:uid=1000", RequestID: "test"}
	g := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(reqctx.With(ctx, caller), req)
		}))
	Register(g, a, a, Options{Classifications: kms.DefaultTable()})
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{auth: a, recorder: rec, conn: conn, entries: wardv1.NewEntriesClient(conn), agents: wardv1.NewAgentsClient(conn),
		ca: wardv1.NewCAClient(conn), policy: wardv1.NewPolicyClient(conn)}
}

func code(err error) codes.Code { return status.Code(err) }

// auditEvents returns every event in the log.
func (e *env) auditEvents(t testing.TB) []audit.Event {
	t.Helper()
	l := e.auth.sv.Audit
	return authoritytest.ReadEvents(t, l)
}
