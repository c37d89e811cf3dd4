package adminapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/seal"
)

type operatorService struct {
	wardv1.UnimplementedOperatorServer
	a *api
}

func (o *operatorService) status(ctx context.Context) (*wardv1.SealStatus, error) {
	st, err := o.a.lc.Status(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading seal status: %v", err)
	}
	return &wardv1.SealStatus{
		Initialized: st.Initialized, Sealed: st.Sealed, SealType: st.Type,
		Threshold: uint32(st.Threshold), Shares: uint32(st.Shares), Progress: uint32(st.Progress),
		StorageBackend: st.StorageBackend, Version: st.Version, TrustDomain: st.TrustDomain,
		AuditSize: st.AuditSize,
	}, nil
}

func (o *operatorService) Status(ctx context.Context, _ *wardv1.StatusRequest) (*wardv1.SealStatus, error) {
	return o.status(ctx)
}

func (o *operatorService) Init(ctx context.Context, r *wardv1.InitRequest) (*wardv1.InitResponse, error) {
	shares, err := o.a.lc.Init(ctx, seal.InitOptions{Shares: int(r.Shares), Threshold: int(r.Threshold)})
	if err != nil {
		return nil, err
	}
	out := &wardv1.InitResponse{Shares: shares}
	out.Status, err = o.status(ctx)
	return out, err
}

func (o *operatorService) Unseal(ctx context.Context, r *wardv1.UnsealRequest) (*wardv1.SealStatus, error) {
	if r.ResetProgress {
		o.a.lc.ResetUnseal(ctx)
		return o.status(ctx)
	}
	if err := o.a.lc.Unseal(ctx, r.Share); err != nil {
		return nil, err
	}
	return o.status(ctx)
}

func (o *operatorService) Seal(ctx context.Context, _ *wardv1.SealRequest) (*wardv1.SealStatus, error) {
	if err := o.a.lc.Seal(ctx); err != nil {
		return nil, err
	}
	return o.status(ctx)
}
