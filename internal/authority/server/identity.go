package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// identityState holds the workload identity services while unsealed.
type identityState struct {
	ca     *ca.CA
	reg    *registry.Registry
	node   *nodeapi.Server // nil when identity.node_api_address is empty
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// registerIdentity registers the identity admin services on the admin
// gRPC server.
func (s *Server) registerIdentity(g *grpc.Server) {
	wardv1.RegisterEntriesServer(g, &entriesService{s: s})
	wardv1.RegisterAgentsServer(g, &agentsService{s: s})
	wardv1.RegisterCAServer(g, &caService{s: s})
}

// auditFunc appends to the unsealed audit log.
func auditFunc(st *unsealedState) registry.AuditFunc {
	return func(ctx context.Context, ev audit.Event) error {
		_, err := st.audit.Append(ctx, ev)
		return err
	}
}

// startIdentity opens the CA over the barrier store (creating root,
// intermediate and JWT key on first unseal), keeps it rotating, opens the
// registry and, if configured, starts the Node API.
func (s *Server) startIdentity(ctx context.Context, st *unsealedState) error {
	ic := s.cfg.Identity.Effective()
	td, err := spiffeid.TrustDomainFromString(s.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("trust_domain: %w", err)
	}
	bs := s.barrier.Store()
	c, err := ca.Open(ctx, bs, ca.Config{TrustDomain: td, KeyType: ca.KeyType(ic.KeyType),
		SVIDTTL: time.Duration(ic.SVIDTTL), MaxSVIDTTL: time.Duration(ic.MaxSVIDTTL), JWTSVIDTTL: time.Duration(ic.JWTSVIDTTL),
		IntermediateTTL: time.Duration(ic.IntermediateTTL), RootTTL: time.Duration(ic.RootTTL), RefreshHint: time.Duration(ic.RefreshHint)}, nil)
	if err != nil {
		return fmt.Errorf("opening the CA: %w", err)
	}
	if !c.Initialized() {
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("initialising the CA of %s: %w", td, err)
		}
		ev := s.event(reqctx.From(ctx), "ca.init", audit.ResultOK, "")
		ev.Fields = map[string]string{"trust_domain": td.Name()}
		if _, err := st.audit.Append(ctx, ev); err != nil {
			return fmt.Errorf("audit log unavailable: %w", err)
		}
	}
	reg, err := registry.New(bs, registry.Options{TrustDomain: td, Audit: auditFunc(st),
		MaxEntryTTL: time.Duration(ic.MaxSVIDTTL), MaxTokenTTL: time.Duration(ic.JoinTokenMaxTTL)})
	if err != nil {
		return err
	}
	id := &identityState{ca: c, reg: reg}
	if ic.NodeAPIAddress != "" {
		var roots *x509.CertPool
		if ic.X509PopCABundle != "" {
			if roots, err = config.LoadCertPool(ic.X509PopCABundle); err != nil {
				return fmt.Errorf("identity.x509pop_ca_bundle: %w", err)
			}
		}
		id.node, err = nodeapi.New(nodeapi.Config{CA: c, Registry: reg, Audit: auditFunc(st), X509PopRoots: roots,
			AgentSVIDTTL: time.Duration(ic.AgentSVIDTTL), DNSNames: ic.NodeAPIDNSNames, Log: s.log.With("component", "nodeapi"),
			Register: s.registerNodeServices, WorkloadMethod: workloadMethod, AuditLog: newAuditSource(st.audit),
			OnConnRefused: func(reason string) { s.metrics.nodeAPIRefused.WithLabelValues(reason).Inc() }})
		if err != nil {
			return err
		}
		if err := id.node.Listen(ic.NodeAPIAddress); err != nil {
			return err
		}
		s.log.Info("Node API listening", "address", id.node.Addr().String(), "spiffe_id", nodeapi.ServerID(td).String())
	}
	jobCtx, cancel := context.WithCancel(context.Background())
	id.cancel = cancel
	id.wg.Add(2)
	go func() {
		defer id.wg.Done()
		c.Run(jobCtx, 0, func(err error) { s.log.Error("CA rotation schedule", "err", err) })
	}()
	go func() {
		defer id.wg.Done()
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-jobCtx.Done():
				return
			case <-t.C:
				if _, err := reg.PurgeTokens(jobCtx, time.Hour); err != nil {
					s.log.Warn("purging expired join tokens", "err", err)
				}
			}
		}
	}()
	st.ident = id
	return nil
}

// stopIdentity stops them on seal.
func (s *Server) stopIdentity(st *unsealedState) {
	id := st.ident
	if id == nil {
		return
	}
	if id.node != nil {
		id.node.Stop()
	}
	id.cancel()
	id.wg.Wait()
	st.ident = nil
}

// NodeAPIAddress is the bound Node API address, or "" when it is off or
// the authority is sealed.
func (s *Server) NodeAPIAddress() string {
	st, err := s.state()
	if err != nil || st.ident == nil || st.ident.node == nil {
		return ""
	}
	if a := st.ident.node.Addr(); a != nil {
		return a.String()
	}
	return ""
}

func (s *Server) identity() (*identityState, error) {
	st, err := s.state()
	if err != nil {
		return nil, err
	}
	if st.ident == nil {
		return nil, status.Error(codes.FailedPrecondition, "workload identity is not running on this authority")
	}
	return st.ident, nil
}

// --- Entries ---

type entriesService struct {
	wardv1.UnimplementedEntriesServer
	s *Server
}

func (e *entriesService) CreateEntry(ctx context.Context, r *wardv1.CreateEntryRequest) (*wardv1.Entry, error) {
	id, err := e.s.identity()
	if err != nil {
		return nil, err
	}
	if r.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "entry is missing")
	}
	out, err := id.reg.CreateEntry(ctx, nodeapi.EntryFromProto(r.Entry))
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	e.s.refreshPrincipals(ctx)
	return nodeapi.EntryProto(out), nil
}

func (e *entriesService) ListEntries(ctx context.Context, r *wardv1.ListEntriesRequest) (*wardv1.ListEntriesResponse, error) {
	id, err := e.s.identity()
	if err != nil {
		return nil, err
	}
	list, err := id.reg.ListEntries(ctx, registry.ListFilter{ParentID: r.ParentId, SPIFFEIDPrefix: r.SpiffeIdPrefix})
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	out := &wardv1.ListEntriesResponse{Entries: make([]*wardv1.Entry, len(list))}
	for i, en := range list {
		out.Entries[i] = nodeapi.EntryProto(en)
	}
	return out, nil
}

func (e *entriesService) GetEntry(ctx context.Context, r *wardv1.GetEntryRequest) (*wardv1.Entry, error) {
	id, err := e.s.identity()
	if err != nil {
		return nil, err
	}
	out, err := id.reg.GetEntry(ctx, r.Id)
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	return nodeapi.EntryProto(out), nil
}

func (e *entriesService) UpdateEntry(ctx context.Context, r *wardv1.UpdateEntryRequest) (*wardv1.Entry, error) {
	id, err := e.s.identity()
	if err != nil {
		return nil, err
	}
	if r.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "entry is missing")
	}
	out, err := id.reg.UpdateEntry(ctx, nodeapi.EntryFromProto(r.Entry), r.ExpectRevision)
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	e.s.refreshPrincipals(ctx)
	return nodeapi.EntryProto(out), nil
}

func (e *entriesService) DeleteEntry(ctx context.Context, r *wardv1.DeleteEntryRequest) (*wardv1.DeleteEntryResponse, error) {
	id, err := e.s.identity()
	if err != nil {
		return nil, err
	}
	if err := id.reg.DeleteEntry(ctx, r.Id); err != nil {
		return nil, nodeapi.Status(err)
	}
	e.s.refreshPrincipals(ctx)
	return &wardv1.DeleteEntryResponse{}, nil
}

// --- Agents ---

type agentsService struct {
	wardv1.UnimplementedAgentsServer
	s *Server
}

func (a *agentsService) CreateJoinToken(ctx context.Context, r *wardv1.CreateJoinTokenRequest) (*wardv1.JoinToken, error) {
	id, err := a.s.identity()
	if err != nil {
		return nil, err
	}
	if r.TtlSeconds < 0 || r.TtlSeconds > int64(365*24*time.Hour/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "ttl_seconds %d is out of range", r.TtlSeconds)
	}
	tok, err := id.reg.CreateJoinToken(ctx, time.Duration(r.TtlSeconds)*time.Second, r.AgentPath)
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	return &wardv1.JoinToken{Token: tok.Token, Expires: timestamp(tok.Expires), AgentId: tok.AgentID.String()}, nil
}

func (a *agentsService) ListAgents(ctx context.Context, _ *wardv1.ListAgentsRequest) (*wardv1.ListAgentsResponse, error) {
	id, err := a.s.identity()
	if err != nil {
		return nil, err
	}
	list, err := id.reg.ListAgents(ctx)
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	out := &wardv1.ListAgentsResponse{Agents: make([]*wardv1.Agent, len(list))}
	for i, ag := range list {
		out.Agents[i] = nodeapi.AgentProto(ag)
	}
	return out, nil
}

func (a *agentsService) EvictAgent(ctx context.Context, r *wardv1.EvictAgentRequest) (*wardv1.Agent, error) {
	id, err := a.s.identity()
	if err != nil {
		return nil, err
	}
	aid, err := spiffeid.FromString(r.SpiffeId)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent ID %q is not a SPIFFE ID (%v): see `ward agent list`", r.SpiffeId, err)
	}
	ag, err := id.reg.EvictAgent(ctx, aid)
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	return nodeapi.AgentProto(ag), nil
}

// --- CA ---

type caService struct {
	wardv1.UnimplementedCAServer
	s *Server
}

func caStatus(c *ca.CA) *wardv1.CAStatus {
	st := c.State()
	out := &wardv1.CAStatus{TrustDomain: st.TrustDomain, BundleSequence: st.BundleSequence, RefreshHintSeconds: int64(st.RefreshHint / time.Second)}
	certs := map[string][]byte{}
	if b, err := c.Bundle(); err == nil {
		for _, r := range b.X509Authorities() {
			if kid, err := keyutil.CAKeyID(r.PublicKey); err == nil {
				certs[kid] = r.Raw
			}
		}
	}
	if in, err := c.ActiveIntermediate(); err == nil {
		if kid, err := keyutil.CAKeyID(in.PublicKey); err == nil {
			certs[kid] = in.Raw
		}
	}
	for _, k := range st.Keys {
		ck := &wardv1.CAKey{Id: k.ID, Kind: string(k.Kind), State: string(k.State), NotBefore: timestamp(k.NotBefore),
			NotAfter: timestamp(k.NotAfter), Activated: timestamp(k.ActivatedAt)}
		if der, ok := certs[k.ID]; ok {
			ck.CertificatePem = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
		out.Keys = append(out.Keys, ck)
	}
	return out
}

// caAdmin runs an audited CA mutation (fail closed: no "started" event, no
// change).
func (s *Server) caAdmin(ctx context.Context, op string, fields map[string]string, f func(c *ca.CA) error) (*wardv1.CAStatus, error) {
	id, err := s.identity()
	if err != nil {
		return nil, err
	}
	st, err := s.state()
	if err != nil {
		return nil, err
	}
	caller := reqctx.From(ctx)
	ev := s.event(caller, op, audit.ResultStarted, "")
	ev.Fields = fields
	if _, err := st.audit.Append(ctx, ev); err != nil {
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	opErr := f(id.ca)
	ev = s.event(caller, op, audit.ResultOK, "")
	ev.Fields = fields
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	if _, err := st.audit.Append(ctx, ev); err != nil && opErr == nil {
		return nil, status.Errorf(codes.Unavailable, "%s was applied but its audit event could not be written: %v", op, err)
	}
	if opErr != nil {
		return nil, nodeapi.Status(opErr)
	}
	return caStatus(id.ca), nil
}

func (c *caService) ShowCA(ctx context.Context, _ *wardv1.ShowCARequest) (*wardv1.CAStatus, error) {
	id, err := c.s.identity()
	if err != nil {
		return nil, err
	}
	return caStatus(id.ca), nil
}

func (c *caService) RotateCA(ctx context.Context, r *wardv1.RotateCARequest) (*wardv1.CAStatus, error) {
	if r.Root {
		return c.s.caAdmin(ctx, "ca.rotate_root", nil, func(a *ca.CA) error { return a.RotateRoot(ctx) })
	}
	return c.s.caAdmin(ctx, "ca.rotate", nil, func(a *ca.CA) error { return a.Rotate(ctx) })
}

func (c *caService) TaintCAKey(ctx context.Context, r *wardv1.TaintCAKeyRequest) (*wardv1.CAStatus, error) {
	if r.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key_id is required: see `ward ca show`")
	}
	return c.s.caAdmin(ctx, "ca.taint", map[string]string{"key_id": r.KeyId}, func(a *ca.CA) error {
		if err := a.Taint(ctx, r.KeyId); err != nil {
			return err
		}
		return c.s.publishTaints(ctx, a, r.KeyId)
	})
}

// publishTaints puts every tainted CA key (the one just tainted, and the
// intermediates a tainted root took with it) on the policy deny-list as a
// new version, so proxies refuse chains through them within seconds, as
// the Node API and the workload KMS already do. With no policy applied yet
// nothing is published (everything is denied then) and the first version
// applied carries the taints (policystore.WithTaintedKeys).
func (s *Server) publishTaints(ctx context.Context, a *ca.CA, keyID string) error {
	ps, err := s.policyStore()
	if err == nil {
		_, err = ps.TaintKeys(ctx, reqctx.From(ctx).Actor, a.TaintedKeyIDs(), "ca taint "+keyID)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, policystore.ErrNoPolicy):
		s.log.Warn("CA key tainted while no policy is applied: the first policy version will carry it", "key_id", keyID)
		return nil
	}
	return status.Errorf(codes.Unavailable,
		"CA key %s is tainted in the CA (it no longer signs and agents re-issue), but adding it to the proxies' deny-list failed: %v; "+
			"until that succeeds proxies still accept chains through it: run `ward ca taint %s` again (it is idempotent) once the policy store is reachable",
		keyID, err, keyID)
}

func (c *caService) GetBundle(ctx context.Context, _ *wardv1.GetBundleRequest) (*wardv1.Bundle, error) {
	id, err := c.s.identity()
	if err != nil {
		return nil, err
	}
	b, err := id.ca.Bundle()
	if err != nil {
		return nil, nodeapi.Status(err)
	}
	j, err := b.Marshal()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the bundle: %v", err)
	}
	var p []byte
	for _, r := range b.X509Authorities() {
		p = append(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	seq, _ := b.SequenceNumber()
	return &wardv1.Bundle{TrustDomain: id.ca.TrustDomain().Name(), SpiffeJson: j, X509Pem: p, Sequence: seq}, nil
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
