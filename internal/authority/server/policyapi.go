package server

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// policyAuditor records policy changes in the audit log.
type policyAuditor struct {
	s  *Server
	st *unsealedState
}

func (a *policyAuditor) AuditPolicy(ctx context.Context, op string, version uint64, fields map[string]string, opErr error) error {
	ev := a.s.event(reqctx.From(ctx), op, audit.ResultOK, "")
	if fields["phase"] == "started" {
		ev.Result = audit.ResultStarted
	}
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	ev.Fields = map[string]string{}
	for k, v := range fields {
		if k != "phase" {
			ev.Fields[k] = v
		}
	}
	if version != 0 {
		ev.Fields["policy_version"] = fmt.Sprint(version)
	}
	_, err := a.st.audit.Append(ctx, ev)
	return err
}

func (s *Server) policyStore() (*policystore.Store, error) {
	st, err := s.state()
	if err != nil {
		return nil, err
	}
	return st.policy, nil
}

func policyError(err error) error {
	var ce *policy.CompileError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, policystore.ErrNoPolicy), errors.Is(err, policystore.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(codes.FailedPrecondition, err.Error())
}

func versionProto(v policystore.Version, current uint64, withBundle bool) (*wardv1.PolicyVersion, error) {
	out := &wardv1.PolicyVersion{
		Version: v.Number, Created: timestamppb.New(v.Created), Actor: v.Actor, Comment: v.Comment,
		Current: v.Number == current, PolicyCount: uint32(v.PolicyCount), Digest: v.Digest(), RestoredFrom: v.RestoredFrom,
		DenyListSize: uint32(len(v.Bundle.DenyList.SPIFFEIDs) + len(v.Bundle.DenyList.Serials) + len(v.Bundle.DenyList.TaintedKeys)),
	}
	if withBundle {
		b, err := v.BundleJSON()
		if err != nil {
			return nil, err
		}
		out.BundleJson = b
	}
	return out, nil
}

type policyService struct {
	wardv1.UnimplementedPolicyServer
	s *Server
}

func (p *policyService) ApplyPolicy(ctx context.Context, r *wardv1.ApplyPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.s.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Apply(ctx, reqctx.From(ctx).Actor, r.Files, r.Comment)
	if err != nil {
		return nil, policyError(err)
	}
	return versionProto(v, v.Number, false)
}

func (p *policyService) ListPolicyVersions(ctx context.Context, _ *wardv1.ListPolicyVersionsRequest) (*wardv1.ListPolicyVersionsResponse, error) {
	ps, err := p.s.policyStore()
	if err != nil {
		return nil, err
	}
	vs, cur, err := ps.List(ctx)
	if err != nil {
		return nil, policyError(err)
	}
	out := &wardv1.ListPolicyVersionsResponse{}
	for _, v := range vs {
		pv, err := versionProto(v, cur, false)
		if err != nil {
			return nil, err
		}
		out.Versions = append(out.Versions, pv)
	}
	return out, nil
}

func (p *policyService) GetPolicy(ctx context.Context, r *wardv1.GetPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.s.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Get(ctx, r.Version)
	if err != nil {
		return nil, policyError(err)
	}
	cur, _ := ps.Current(ctx)
	return versionProto(v, cur, true)
}

func (p *policyService) RollbackPolicy(ctx context.Context, r *wardv1.RollbackPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.s.policyStore()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version to roll back to")
	}
	v, err := ps.Rollback(ctx, reqctx.From(ctx).Actor, r.Version, r.Comment)
	if err != nil {
		return nil, policyError(err)
	}
	return versionProto(v, v.Number, false)
}

func (p *policyService) Revoke(ctx context.Context, r *wardv1.RevokeRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.s.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Revoke(ctx, reqctx.From(ctx).Actor, r.SpiffeIds, r.Serials, r.Remove, r.Comment)
	if err != nil {
		return nil, policyError(err)
	}
	return versionProto(v, v.Number, false)
}

// policyDistribution streams policy versions; on the admin socket for
// local consumers, and on the Node API for agents.
type policyDistribution struct {
	wardv1.UnimplementedPolicyDistributionServer
	s *Server
}

func (p *policyDistribution) WatchPolicy(r *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	ps, err := p.s.policyStore()
	if err != nil {
		return err
	}
	err = ps.Watch(ss.Context(), r.KnownVersion, func(v policystore.Version) error {
		pv, err := versionProto(v, v.Number, true)
		if err != nil {
			return err
		}
		return ss.Send(pv)
	})
	if ss.Context().Err() != nil {
		return nil
	}
	return policyError(err)
}

// principalsFunc reports every registered SPIFFE ID's labels, for the
// policy versions enforcement points receive. Entries sharing one SPIFFE
// ID are merged in entry-ID order (a later entry's label wins).
func (s *Server) principalsFunc(st *unsealedState) policystore.PrincipalsFunc {
	return func(ctx context.Context) (map[string]policy.Principal, error) {
		if st.ident == nil {
			return nil, nil
		}
		entries, err := st.ident.reg.ListEntries(ctx, registry.ListFilter{})
		if err != nil {
			return nil, err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
		out := map[string]policy.Principal{}
		for _, e := range entries {
			if len(e.Labels) == 0 {
				continue
			}
			p := out[e.SPIFFEID]
			if p.Labels == nil {
				p.Labels = map[string]string{}
			}
			for k, v := range e.Labels {
				p.Labels[k] = v
			}
			out[e.SPIFFEID] = p
		}
		return out, nil
	}
}

// taintedKeysFunc reports the CA's tainted key IDs, which every new policy
// version carries on its deny-list (none while identity is not running).
func (s *Server) taintedKeysFunc(st *unsealedState) func() []string {
	return func() []string {
		if st.ident == nil || st.ident.ca == nil {
			return nil
		}
		return st.ident.ca.TaintedKeyIDs()
	}
}

// refreshPrincipals publishes a new policy version when an entry change
// altered principal attributes. A failure is logged, not returned: the
// entry change itself succeeded and the next change or apply retries.
func (s *Server) refreshPrincipals(ctx context.Context) {
	st, err := s.state()
	if err != nil {
		return
	}
	if v, err := st.policy.RefreshPrincipals(ctx, reqctx.From(ctx).Actor); err != nil {
		s.log.Error("publishing changed principal labels in a new policy version failed", "err", err)
	} else if v != 0 {
		s.log.Info("principal labels changed: new policy version", "version", v)
	}
}
