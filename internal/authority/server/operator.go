package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

type operatorService struct {
	wardv1.UnimplementedOperatorServer
	s *Server
}

func (o *operatorService) status(ctx context.Context) (*wardv1.SealStatus, error) {
	st, err := o.s.seals.Status(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading seal status: %v", err)
	}
	out := &wardv1.SealStatus{
		Initialized: st.Initialized, Sealed: o.s.Sealed(), SealType: st.Type,
		Threshold: uint32(st.Threshold), Shares: uint32(st.Shares), Progress: uint32(st.Progress),
		StorageBackend: o.s.raw.Backend(), Version: Version, TrustDomain: o.s.cfg.TrustDomain,
	}
	out.AuditSize = o.s.auditSize()
	return out, nil
}

func (o *operatorService) Status(ctx context.Context, _ *wardv1.StatusRequest) (*wardv1.SealStatus, error) {
	return o.status(ctx)
}

func sealError(err error) error {
	switch {
	case errors.Is(err, seal.ErrAlreadyInitialized), errors.Is(err, seal.ErrNotInitialized),
		errors.Is(err, seal.ErrAlreadyUnsealed):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, seal.ErrBadShareEncoding), errors.Is(err, seal.ErrUnknownShare),
		errors.Is(err, seal.ErrRepeatedShare), errors.Is(err, seal.ErrKeyringMismatch),
		errors.Is(err, seal.ErrBadOptions):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func (o *operatorService) Init(ctx context.Context, r *wardv1.InitRequest) (*wardv1.InitResponse, error) {
	caller := reqctx.From(ctx)
	res, err := o.s.seals.Init(ctx, seal.InitOptions{Shares: int(r.Shares), Threshold: int(r.Threshold)})
	if err != nil {
		o.s.recordSealed(o.s.event(caller, "operator.init", "error", err.Error()))
		return nil, sealError(err)
	}
	o.s.recordSealed(o.s.event(caller, "operator.init", "ok", ""))
	out := &wardv1.InitResponse{Shares: res.Encoded()}
	if o.s.auto {
		if _, err := o.s.seals.AutoUnseal(ctx); err != nil {
			return nil, sealError(err)
		}
		if err := o.s.afterUnseal(ctx, caller); err != nil {
			o.s.seals.Seal(ctx)
			return nil, status.Error(codes.Unavailable, err.Error())
		}
	}
	out.Status, err = o.status(ctx)
	return out, err
}

func (o *operatorService) Unseal(ctx context.Context, r *wardv1.UnsealRequest) (*wardv1.SealStatus, error) {
	caller := reqctx.From(ctx)
	if r.ResetProgress {
		o.s.seals.ResetProgress()
		o.s.recordSealed(o.s.event(caller, "operator.unseal.reset", "ok", ""))
		return o.status(ctx)
	}
	if !o.s.Sealed() {
		return nil, status.Error(codes.FailedPrecondition, "the authority is already unsealed: nothing to do")
	}
	// Refuse the share (keeping the progress) if the unseal could not
	// complete anyway: better now than after the last share.
	if err := o.s.preflightListeners(); err != nil {
		o.s.recordSealed(o.s.event(caller, "operator.unseal", audit.ResultError, err.Error()))
		pr, _ := o.s.seals.Status(ctx)
		return nil, status.Errorf(codes.FailedPrecondition, "%v. This share was not accepted; unseal progress stays %d/%d", err, pr.Progress, pr.Threshold)
	}
	st, err := o.s.seals.SubmitShare(ctx, r.Share)
	if err != nil {
		o.s.recordSealed(o.s.event(caller, "operator.unseal", "error", err.Error()))
		return nil, sealError(err)
	}
	if st.Sealed {
		o.s.recordSealed(o.s.event(caller, "operator.unseal.share", "ok", ""))
		return o.status(ctx)
	}
	if err := o.s.afterUnseal(ctx, caller); err != nil {
		// The combined key is wiped: the shares submitted so far are gone
		// with it, and the operator must be told so.
		o.s.seals.Seal(ctx)
		return nil, status.Errorf(codes.Unavailable, "the last share was accepted but the unseal failed: %v. The authority stays sealed and the unseal progress was reset to 0/%d (the failure is in the audit log): fix the cause, then submit %d shares again",
			err, st.Threshold, st.Threshold)
	}
	return o.status(ctx)
}

func (o *operatorService) Seal(ctx context.Context, _ *wardv1.SealRequest) (*wardv1.SealStatus, error) {
	st, err := o.s.state()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, "the authority is already sealed")
	}
	// Sealing is the emergency brake: it always happens. If its event
	// cannot be written the failure is logged and the event is kept to be
	// appended at the next unseal.
	ev := o.s.event(reqctx.From(ctx), "operator.seal", "ok", "")
	if _, err := st.audit.Append(ctx, ev); err != nil {
		o.s.log.Error("could not audit the seal; sealing anyway", "err", err)
		o.s.recordSealed(ev)
	}
	o.s.sealInternal()
	return o.status(ctx)
}
