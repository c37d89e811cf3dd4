package adminapi

import (
	"context"
	"encoding/json"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/posturestore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Drift is the authority's drift evaluation as the admin API reaches it
// (the server implements it; internal/governance/drift is wired into the
// server by the CLI).
type Drift interface {
	// EvaluateDrift evaluates now and keeps the result as the latest.
	EvaluateDrift(ctx context.Context) (posture.Report, error)
	// Drift is the latest evaluation (false before the first).
	Drift() (posture.Report, bool)
	// DriftState is what an evaluation compares: the rules that apply,
	// the posture version, the scope and the state.
	DriftState(ctx context.Context) (posture.Rules, uint64, string, posture.State, error)
	// PostureChanged tells the evaluation a new posture version is stored.
	PostureChanged()
}

// --- Posture ---

type postureService struct {
	wardv1.UnimplementedPostureServer
	a *api
}

func (p *postureService) services() (*Services, error) {
	sv, err := p.a.us.Services()
	if err != nil {
		return nil, err
	}
	if sv.Posture == nil {
		return nil, status.Error(codes.FailedPrecondition, "the posture store is not running on this authority")
	}
	return sv, nil
}

func postureProto(v posturestore.Version, current uint64) *wardv1.PostureVersion {
	return &wardv1.PostureVersion{Number: v.Number, Created: timestamppb.New(v.Created), Actor: v.Actor, Comment: v.Comment,
		File: v.Source, Digest: v.Digest(), Current: v.Number == current}
}

func (p *postureService) SetPosture(ctx context.Context, r *wardv1.SetPostureRequest) (*wardv1.PostureVersion, error) {
	sv, err := p.services()
	if err != nil {
		return nil, err
	}
	v, err := sv.Posture.Set(ctx, reqctx.From(ctx).Actor, r.File, r.Comment)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	if sv.Drift != nil {
		sv.Drift.PostureChanged()
	}
	return postureProto(v, v.Number), nil
}

func (p *postureService) GetPosture(ctx context.Context, r *wardv1.GetPostureRequest) (*wardv1.PostureVersion, error) {
	sv, err := p.services()
	if err != nil {
		return nil, err
	}
	v, err := sv.Posture.Get(ctx, r.Version)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	_, cur, err := sv.Posture.List(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return postureProto(v, cur), nil
}

func (p *postureService) ListPostureVersions(ctx context.Context, _ *wardv1.ListPostureVersionsRequest) (*wardv1.ListPostureVersionsResponse, error) {
	sv, err := p.services()
	if err != nil {
		return nil, err
	}
	vs, cur, err := sv.Posture.List(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ListPostureVersionsResponse{Current: cur}
	for _, v := range vs {
		pv := postureProto(v, cur)
		pv.File = nil // history lists; GetPosture shows a file
		out.Versions = append(out.Versions, pv)
	}
	return out, nil
}

func (p *postureService) GetDrift(ctx context.Context, r *wardv1.GetDriftRequest) (*wardv1.DriftReport, error) {
	sv, err := p.services()
	if err != nil {
		return nil, err
	}
	if sv.Drift == nil {
		return nil, status.Error(codes.FailedPrecondition, "drift evaluation is not wired into this authority")
	}
	var rep posture.Report
	ok := false
	if r.Latest {
		rep, ok = sv.Drift.Drift()
	}
	if !ok {
		if rep, err = sv.Drift.EvaluateDrift(ctx); err != nil {
			return nil, errs.ToStatus(err)
		}
	}
	rules, _, _, st, err := sv.Drift.DriftState(ctx)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.DriftReport{}
	if out.Report, err = json.Marshal(rep); err != nil {
		return nil, err
	}
	if out.Rules, err = json.Marshal(rules); err != nil {
		return nil, err
	}
	if out.State, err = json.Marshal(st); err != nil {
		return nil, err
	}
	return out, nil
}
