package adminapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

type policyService struct {
	wardv1.UnimplementedPolicyServer
	a *api
}

func (p *policyService) ApplyPolicy(ctx context.Context, r *wardv1.ApplyPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Apply(ctx, reqctx.From(ctx).Actor, r.Files, r.Comment)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.VersionProto(v, v.Number, false)
}

// CheckPolicy runs ApplyPolicy's checks and stores nothing (ward apply
// asks it before changing anything).
func (p *policyService) CheckPolicy(ctx context.Context, r *wardv1.ApplyPolicyRequest) (*wardv1.CheckPolicyResponse, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	n, ws, err := ps.Check(ctx, r.Files)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.CheckPolicyResponse{PolicyCount: uint32(n), FederationWarnings: ws}, nil
}

func (p *policyService) ListPolicyVersions(ctx context.Context, _ *wardv1.ListPolicyVersionsRequest) (*wardv1.ListPolicyVersionsResponse, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	vs, cur, err := ps.List(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ListPolicyVersionsResponse{}
	for _, v := range vs {
		pv, err := apiconv.VersionProto(v, cur, false)
		if err != nil {
			return nil, err
		}
		out.Versions = append(out.Versions, pv)
	}
	return out, nil
}

func (p *policyService) GetPolicy(ctx context.Context, r *wardv1.GetPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Get(ctx, r.Version)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	cur, _ := ps.Current(ctx)
	return apiconv.VersionProto(v, cur, true)
}

func (p *policyService) RollbackPolicy(ctx context.Context, r *wardv1.RollbackPolicyRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version to roll back to")
	}
	v, err := ps.Rollback(ctx, reqctx.From(ctx).Actor, r.Version, r.Comment)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.VersionProto(v, v.Number, false)
}

func (p *policyService) Revoke(ctx context.Context, r *wardv1.RevokeRequest) (*wardv1.PolicyVersion, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	v, err := ps.Revoke(ctx, reqctx.From(ctx).Actor, r.SpiffeIds, r.Serials, r.Remove, r.Comment)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.VersionProto(v, v.Number, false)
}

// policyDistribution streams policy versions to local consumers on the
// admin socket (the Node API streams them to agents).
type policyDistribution struct {
	wardv1.UnimplementedPolicyDistributionServer
	a *api
}

func (p *policyDistribution) WatchPolicy(r *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	ps, err := p.a.policyStore()
	if err != nil {
		return err
	}
	return apiconv.WatchPolicy(ps, r, ss)
}

// refreshPrincipals publishes a new policy version when an entry change
// altered principal attributes. A failure is logged, not returned: the
// entry change itself succeeded and the next change or apply retries.
func (a *api) refreshPrincipals(ctx context.Context) {
	ps, err := a.policyStore()
	if err != nil {
		return
	}
	if v, err := ps.RefreshPrincipals(ctx, reqctx.From(ctx).Actor); err != nil {
		a.log.Error("publishing changed principal labels in a new policy version failed", "err", err)
	} else if v != 0 {
		a.log.Info("principal labels changed: new policy version", "version", v)
	}
}

// PolicyLintMode reports the cluster's stored federation lint mode.
func (p *policyService) PolicyLintMode(ctx context.Context, _ *wardv1.PolicyLintModeRequest) (*wardv1.PolicyLintModeResponse, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	ls, err := ps.LintStatus(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := lintModeProto(ls.Stored, ps.LocalStrict())
	out.CurrentVersion, out.CurrentWarnings = ls.Version, ls.Warnings
	return out, nil
}

// SetPolicyLintMode sets the cluster's stored federation lint mode
// (audited as policy.federation_lint): the operator's explicit action,
// the only way to lower it to warn.
func (p *policyService) SetPolicyLintMode(ctx context.Context, r *wardv1.SetPolicyLintModeRequest) (*wardv1.PolicyLintModeResponse, error) {
	ps, err := p.a.policyStore()
	if err != nil {
		return nil, err
	}
	m, err := ps.SetFederationLint(ctx, reqctx.From(ctx).Actor, r.Mode, r.Comment)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := lintModeProto(m, ps.LocalStrict())
	if ls, err := ps.LintStatus(ctx); err == nil { // the mode is set: a failed check only leaves these out
		out.CurrentVersion, out.CurrentWarnings = ls.Version, ls.Warnings
	}
	return out, nil
}

func lintModeProto(m policystore.LintMode, local bool) *wardv1.PolicyLintModeResponse {
	out := &wardv1.PolicyLintModeResponse{Mode: m.Mode, Actor: m.Actor, Comment: m.Comment, LocalStrict: local}
	if !m.Changed.IsZero() {
		out.Changed = timestamppb.New(m.Changed)
	}
	return out
}
