package adminapi

import (
	"context"
	"encoding/pem"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// --- Entries ---

type entriesService struct {
	wardv1.UnimplementedEntriesServer
	a *api
}

func (e *entriesService) CreateEntry(ctx context.Context, r *wardv1.CreateEntryRequest) (*wardv1.Entry, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	if r.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "entry is missing")
	}
	out, err := id.Registry.CreateEntry(ctx, apiconv.EntryFromProto(r.Entry))
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	e.a.refreshPrincipals(ctx)
	return apiconv.EntryProto(out), nil
}

func (e *entriesService) ListEntries(ctx context.Context, r *wardv1.ListEntriesRequest) (*wardv1.ListEntriesResponse, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	list, err := id.Registry.ListEntries(ctx, registry.ListFilter{ParentID: r.ParentId, SPIFFEIDPrefix: r.SpiffeIdPrefix})
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ListEntriesResponse{Entries: make([]*wardv1.Entry, len(list)), MaxBatchEntries: uint32(id.Registry.MaxBatchEntries())}
	for i, en := range list {
		out.Entries[i] = apiconv.EntryProto(en)
	}
	return out, nil
}

func (e *entriesService) GetEntry(ctx context.Context, r *wardv1.GetEntryRequest) (*wardv1.Entry, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	out, err := id.Registry.GetEntry(ctx, r.Id)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.EntryProto(out), nil
}

func (e *entriesService) UpdateEntry(ctx context.Context, r *wardv1.UpdateEntryRequest) (*wardv1.Entry, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	if r.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "entry is missing")
	}
	out, err := id.Registry.UpdateEntry(ctx, apiconv.EntryFromProto(r.Entry), r.ExpectRevision)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	e.a.refreshPrincipals(ctx)
	return apiconv.EntryProto(out), nil
}

func (e *entriesService) DeleteEntry(ctx context.Context, r *wardv1.DeleteEntryRequest) (*wardv1.DeleteEntryResponse, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	if err := id.Registry.DeleteEntry(ctx, r.Id); err != nil {
		return nil, errs.ToStatus(err)
	}
	e.a.refreshPrincipals(ctx)
	return &wardv1.DeleteEntryResponse{}, nil
}

// BatchEntries applies a batch of entry changes in one atomic store write
// and publishes changed principal labels once for the whole batch.
func (e *entriesService) BatchEntries(ctx context.Context, r *wardv1.BatchEntriesRequest) (*wardv1.BatchEntriesResponse, error) {
	id, err := e.a.identity()
	if err != nil {
		return nil, err
	}
	var b registry.Batch
	for _, p := range r.Create {
		b.Create = append(b.Create, apiconv.EntryFromProto(p))
	}
	for _, p := range r.Update {
		en := apiconv.EntryFromProto(p)
		en.Revision = p.GetRevision()
		b.Update = append(b.Update, en)
	}
	for _, d := range r.Delete {
		b.Delete = append(b.Delete, registry.EntryRef{ID: d.GetId(), Revision: d.GetRevision()})
	}
	if r.ValidateOnly {
		if err := id.Registry.CheckBatch(ctx, b); err != nil {
			return nil, errs.ToStatus(err)
		}
		return &wardv1.BatchEntriesResponse{}, nil
	}
	res, err := id.Registry.ApplyBatch(ctx, b)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	if res.Revision != 0 {
		e.a.refreshPrincipals(ctx)
	}
	out := &wardv1.BatchEntriesResponse{Deleted: res.Deleted, Revision: res.Revision}
	for _, en := range res.Created {
		out.Created = append(out.Created, apiconv.EntryProto(en))
	}
	for _, en := range res.Updated {
		out.Updated = append(out.Updated, apiconv.EntryProto(en))
	}
	return out, nil
}

// --- Agents ---

type agentsService struct {
	wardv1.UnimplementedAgentsServer
	a *api
}

func (a *agentsService) CreateJoinToken(ctx context.Context, r *wardv1.CreateJoinTokenRequest) (*wardv1.JoinToken, error) {
	id, err := a.a.identity()
	if err != nil {
		return nil, err
	}
	if r.TtlSeconds < 0 || r.TtlSeconds > int64(365*24*time.Hour/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "ttl_seconds %d is out of range", r.TtlSeconds)
	}
	tok, err := id.Registry.CreateJoinToken(ctx, time.Duration(r.TtlSeconds)*time.Second, r.AgentPath)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.JoinToken{Token: tok.Token, Expires: apiconv.Timestamp(tok.Expires), AgentId: tok.AgentID.String()}, nil
}

func (a *agentsService) ListAgents(ctx context.Context, _ *wardv1.ListAgentsRequest) (*wardv1.ListAgentsResponse, error) {
	id, err := a.a.identity()
	if err != nil {
		return nil, err
	}
	list, err := id.Registry.ListAgents(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ListAgentsResponse{Agents: make([]*wardv1.Agent, len(list))}
	for i, ag := range list {
		out.Agents[i] = apiconv.AgentProto(ag)
	}
	return out, nil
}

func (a *agentsService) EvictAgent(ctx context.Context, r *wardv1.EvictAgentRequest) (*wardv1.Agent, error) {
	id, err := a.a.identity()
	if err != nil {
		return nil, err
	}
	aid, err := spiffeid.FromString(r.SpiffeId)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent ID %q is not a SPIFFE ID (%v): see `ward agent list`", r.SpiffeId, err)
	}
	// The SVIDs still valid that were signed through the agent go on the
	// deny-list (until each one's NotAfter) in the same audited step: an
	// evicted node's workloads are cut off now, not at expiry. So do the
	// jtis of the JWT-SVIDs minted through it (until each one's exp),
	// which every Workload API's ValidateJWTSVID, here and at federated
	// peers, refuses.
	jwts := 0
	revoke := func(ctx context.Context, svids []registry.Issued) (int, error) {
		ps, err := a.a.policyStore()
		if err != nil {
			return 0, err
		}
		exp := make([]policystore.Expiring, len(svids))
		for i, s := range svids {
			exp[i] = policystore.Expiring{Serial: s.Serial, NotAfter: s.NotAfter}
		}
		_, err = ps.RevokeExpiring(ctx, reqctx.From(ctx).Actor, exp, "agent "+aid.String()+" evicted")
		if errors.Is(err, policystore.ErrNoPolicy) {
			return 0, nil // everything is refused anyway; a later evict revokes them
		}
		if err != nil {
			return 0, err
		}
		jwts = registry.CountJWT(svids) // their jtis, on the same list until each one's exp
		return len(svids), nil
	}
	ag, n, err := id.Registry.EvictAgent(ctx, aid, revoke)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := apiconv.AgentProto(ag)
	if n > 0 {
		out.RevokedSvids, out.RevokedJwtSvids = uint32(n-jwts), uint32(jwts)
	}
	return out, nil
}

// --- CA ---

type caService struct {
	wardv1.UnimplementedCAServer
	a *api
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
		ck := &wardv1.CAKey{Id: k.ID, Kind: string(k.Kind), State: string(k.State), NotBefore: apiconv.Timestamp(k.NotBefore),
			NotAfter: apiconv.Timestamp(k.NotAfter), Activated: apiconv.Timestamp(k.ActivatedAt)}
		if der, ok := certs[k.ID]; ok {
			ck.CertificatePem = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
		out.Keys = append(out.Keys, ck)
	}
	return out
}

// caAdmin runs an audited CA mutation (fail closed: no "started" event, no
// change).
func (a *api) caAdmin(ctx context.Context, op string, fields map[string]string, f func(c *ca.CA) error) (*wardv1.CAStatus, error) {
	id, err := a.identity()
	if err != nil {
		return nil, err
	}
	ev := event(ctx, op, audit.ResultStarted, "")
	ev.Fields = fields
	if err := id.Recorder.Record(ctx, ev); err != nil {
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	opErr := f(id.CA)
	ev = event(ctx, op, audit.ResultOK, "")
	ev.Fields = fields
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	if err := id.Recorder.Record(ctx, ev); err != nil && opErr == nil {
		return nil, status.Errorf(codes.Unavailable, "%s was applied but its audit event could not be written: %v", op, err)
	}
	if opErr != nil {
		return nil, errs.ToStatus(opErr)
	}
	return caStatus(id.CA), nil
}

func (c *caService) ShowCA(ctx context.Context, _ *wardv1.ShowCARequest) (*wardv1.CAStatus, error) {
	id, err := c.a.identity()
	if err != nil {
		return nil, err
	}
	return caStatus(id.CA), nil
}

func (c *caService) RotateCA(ctx context.Context, r *wardv1.RotateCARequest) (*wardv1.CAStatus, error) {
	switch {
	case r.Prepare && !r.Root:
		return nil, status.Error(codes.InvalidArgument, "prepare applies to roots only: use --root --prepare (intermediates are not published, so they need no preparation)")
	case r.Prepare:
		return c.a.caAdmin(ctx, "ca.prepare_root", nil, func(a *ca.CA) error { return a.PrepareRoot(ctx) })
	case r.Root:
		return c.a.caAdmin(ctx, "ca.rotate_root", nil, func(a *ca.CA) error { return a.RotateRoot(ctx) })
	}
	return c.a.caAdmin(ctx, "ca.rotate", nil, func(a *ca.CA) error { return a.Rotate(ctx) })
}

func (c *caService) TaintCAKey(ctx context.Context, r *wardv1.TaintCAKeyRequest) (*wardv1.CAStatus, error) {
	if r.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key_id is required: see `ward ca show`")
	}
	return c.a.caAdmin(ctx, "ca.taint", map[string]string{"key_id": r.KeyId}, func(a *ca.CA) error {
		if err := a.Taint(ctx, r.KeyId); err != nil {
			return err
		}
		return c.a.publishTaints(ctx, a, r.KeyId)
	})
}

// publishTaints puts every tainted CA key (the one just tainted, and the
// intermediates a tainted root took with it) on the policy deny-list as a
// new version, so proxies refuse chains through them within seconds, as
// the Node API and the workload KMS already do. With no policy applied yet
// nothing is published (everything is denied then) and the first version
// applied carries the taints (policystore.WithTaintedKeys).
func (a *api) publishTaints(ctx context.Context, c *ca.CA, keyID string) error {
	ps, err := a.policyStore()
	if err == nil {
		_, err = ps.TaintKeys(ctx, reqctx.From(ctx).Actor, c.TaintedKeyIDs(), "ca taint "+keyID)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, policystore.ErrNoPolicy):
		a.log.Warn("CA key tainted while no policy is applied: the first policy version will carry it", "key_id", keyID)
		return nil
	}
	return status.Errorf(codes.Unavailable,
		"CA key %s is tainted in the CA (it no longer signs and agents re-issue), but adding it to the proxies' deny-list failed: %v; "+
			"until that succeeds proxies still accept chains through it: run `ward ca taint %s` again (it is idempotent) once the policy store is reachable",
		keyID, err, keyID)
}

func (c *caService) GetBundle(ctx context.Context, _ *wardv1.GetBundleRequest) (*wardv1.Bundle, error) {
	id, err := c.a.identity()
	if err != nil {
		return nil, err
	}
	b, err := id.CA.Bundle()
	if err != nil {
		return nil, errs.ToStatus(err)
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
	return &wardv1.Bundle{TrustDomain: id.CA.TrustDomain().Name(), SpiffeJson: j, X509Pem: p, Sequence: seq}, nil
}
