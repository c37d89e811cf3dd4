// Package adminapi is the authority's admin API: the gRPC services an
// operator calls on the admin unix socket (Operator, Keys, KMS, Audit,
// Policy, PolicyDistribution, Entries, Agents, CA, Federation, Posture). It reaches the
// authority only through Lifecycle (init, unseal, seal, status) and
// Unsealed (the services that exist while unsealed); the server owns the
// socket, its credentials and the lifecycle itself.
package adminapi

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/posturestore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/authority/seal"
)

// Lifecycle is the authority's sealed ↔ unsealed lifecycle, as the
// Operator service drives it. Its errors are gRPC status errors.
type Lifecycle interface {
	// Status reports the seal and the authority around it.
	Status(ctx context.Context) (Status, error)
	// Init initialises the seal and returns the shares in their human
	// form; an auto seal is unsealed at once.
	Init(ctx context.Context, opts seal.InitOptions) (shares []string, err error)
	// Unseal submits one share; the last one of the threshold unseals.
	Unseal(ctx context.Context, share string) error
	// ResetUnseal forgets the shares submitted so far.
	ResetUnseal(ctx context.Context)
	// Seal stops the unsealed services and wipes keys from memory.
	Seal(ctx context.Context) error
}

// Status is what Operator.Status reports.
type Status struct {
	seal.Status    // Sealed is the authority's: sealed until its services run
	StorageBackend string
	Version        string
	TrustDomain    string
	AuditSize      uint64
}

// Services are the authority's services while it is unsealed.
type Services struct {
	KMS    *kms.Manager
	Policy *policystore.Store
	Audit  *audit.Log
	Hasher *audit.Hasher
	// Recorder is the one audit seam (audit.NewLogRecorder over Audit
	// and Hasher) that every audited admin call records through.
	Recorder audit.Recorder
	// CA and Registry are nil while workload identity is not running.
	CA       *ca.CA
	Registry *registry.Registry
	// Federation is nil while workload identity is not running.
	Federation *federation.Manager
	// Posture is the declared posture's versions; Drift the authority's
	// drift evaluation (posture.go).
	Posture *posturestore.Store
	Drift   Drift
}

// Unsealed gives the services of an unsealed authority.
type Unsealed interface {
	// Services returns them, or a FailedPrecondition status error that
	// says how to unseal while the authority is sealed.
	Services() (*Services, error)
}

// Options are what the services need besides the authority.
type Options struct {
	// Classifications are the key classifications (Keys.ListClassifications).
	Classifications kms.Table
	// Log receives operational messages (default: discard).
	Log *slog.Logger
	// Maintenance, if set, serves backups, barrier rotation and rekeying
	// (maintenance.go).
	Maintenance Maintainer
}

// Register adds every admin service to g.
func Register(g *grpc.Server, lc Lifecycle, us Unsealed, opts Options) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	a := &api{lc: lc, us: us, table: opts.Classifications, log: opts.Log}
	wardv1.RegisterOperatorServer(g, &operatorService{a: a})
	wardv1.RegisterKeysServer(g, &keysService{a: a})
	wardv1.RegisterKMSServer(g, &apiconv.KMS{Manager: a.kmsManager})
	wardv1.RegisterAuditServer(g, &auditService{a: a})
	wardv1.RegisterPolicyServer(g, &policyService{a: a})
	wardv1.RegisterPolicyDistributionServer(g, &policyDistribution{a: a})
	wardv1.RegisterEntriesServer(g, &entriesService{a: a})
	wardv1.RegisterAgentsServer(g, &agentsService{a: a})
	wardv1.RegisterCAServer(g, &caService{a: a})
	wardv1.RegisterFederationServer(g, &federationService{a: a})
	wardv1.RegisterCatalogServer(g, &catalogService{fed: &federationService{a: a}})
	wardv1.RegisterPostureServer(g, &postureService{a: a})
	if opts.Maintenance != nil {
		wardv1.RegisterMaintenanceServer(g, &maintenanceService{m: opts.Maintenance})
	}
}

// api is what every service shares.
type api struct {
	lc    Lifecycle
	us    Unsealed
	table kms.Table
	log   *slog.Logger
}

// unsealedKMS is an Unsealed that gives the KMS alone, without building
// Services: the KMS methods are the hot ones (one allocation less a call).
type unsealedKMS interface {
	KMS() (*kms.Manager, error)
}

func (a *api) kmsManager() (*kms.Manager, error) {
	if u, ok := a.us.(unsealedKMS); ok {
		return u.KMS()
	}
	sv, err := a.us.Services()
	if err != nil {
		return nil, err
	}
	return sv.KMS, nil
}

func (a *api) policyStore() (*policystore.Store, error) {
	sv, err := a.us.Services()
	if err != nil {
		return nil, err
	}
	return sv.Policy, nil
}

// identity returns the services with workload identity running.
func (a *api) identity() (*Services, error) {
	sv, err := a.us.Services()
	if err != nil {
		return nil, err
	}
	if sv.CA == nil || sv.Registry == nil {
		return nil, status.Error(codes.FailedPrecondition, "workload identity is not running on this authority")
	}
	return sv, nil
}

// event builds an audit event for the caller in ctx.
func event(ctx context.Context, op, result, errMsg string) audit.Event {
	ev := audit.NewEvent(ctx, op, result)
	ev.Error = errMsg
	return ev
}
