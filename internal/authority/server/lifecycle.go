package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/adminapi"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/buildinfo"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// lifecycle is the authority as the admin API reaches it: the sealed ↔
// unsealed lifecycle (adminapi.Lifecycle) and the services that exist
// while unsealed (adminapi.Unsealed).
type lifecycle struct{ s *Server }

var (
	_ adminapi.Lifecycle = lifecycle{}
	_ adminapi.Unsealed  = lifecycle{}
)

func (l lifecycle) Status(ctx context.Context) (adminapi.Status, error) {
	st, err := l.s.seals.Status(ctx)
	if err != nil {
		return adminapi.Status{}, err
	}
	st.Sealed = l.s.Sealed()
	return adminapi.Status{Status: st, StorageBackend: l.s.raw.Backend(), Version: buildinfo.Read().Version,
		TrustDomain: l.s.cfg.TrustDomain, AuditSize: l.s.auditSize()}, nil
}

// Services returns the unsealed services, or errSealed.
func (l lifecycle) Services() (*adminapi.Services, error) {
	st, err := l.s.state()
	if err != nil {
		return nil, err
	}
	sv := &adminapi.Services{KMS: st.kms, Policy: st.policy, Audit: st.audit, Hasher: st.hasher, Recorder: st.recorder, Posture: st.posture}
	if l.s.drift.eval != nil {
		sv.Drift = l.s
	}
	if id := st.ident.Load(); id != nil {
		sv.CA, sv.Registry, sv.Federation = id.ca, id.reg, id.fed
	}
	return sv, nil
}

// KMS returns the unsealed KMS, or errSealed (what Services().KMS is,
// without building Services on every KMS call).
func (l lifecycle) KMS() (*kms.Manager, error) { return l.s.kmsManager() }

func (l lifecycle) Init(ctx context.Context, opts seal.InitOptions) ([]string, error) {
	s := l.s
	caller := reqctx.From(ctx)
	res, err := s.seals.Init(ctx, opts)
	if err != nil {
		s.recordSealed(s.event(caller, "operator.init", "error", err.Error()))
		return nil, errs.ToStatus(err)
	}
	s.recordSealed(s.event(caller, "operator.init", "ok", ""))
	if s.auto {
		if _, err := s.seals.AutoUnseal(ctx); err != nil {
			return nil, errs.ToStatus(err)
		}
		if err := s.afterUnseal(ctx, caller); err != nil {
			s.seals.Seal(ctx)
			return nil, status.Error(codes.Unavailable, err.Error())
		}
	}
	return res.Encoded(), nil
}

func (l lifecycle) ResetUnseal(ctx context.Context) {
	l.s.seals.ResetProgress()
	l.s.recordSealed(l.s.event(reqctx.From(ctx), "operator.unseal.reset", "ok", ""))
}

func (l lifecycle) Unseal(ctx context.Context, share string) error {
	s := l.s
	caller := reqctx.From(ctx)
	if !s.Sealed() {
		return status.Error(codes.FailedPrecondition, "the authority is already unsealed: nothing to do")
	}
	// Refuse the share (keeping the progress) if the unseal could not
	// complete anyway: better now than after the last share.
	if err := s.preflightListeners(); err != nil {
		s.recordSealed(s.event(caller, "operator.unseal", audit.ResultError, err.Error()))
		pr, _ := s.seals.Status(ctx)
		return status.Errorf(codes.FailedPrecondition, "%v. This share was not accepted; unseal progress stays %d/%d", err, pr.Progress, pr.Threshold)
	}
	st, err := s.seals.SubmitShare(ctx, share)
	if err != nil {
		s.recordSealed(s.event(caller, "operator.unseal", "error", err.Error()))
		return errs.ToStatus(err)
	}
	if st.Sealed {
		s.recordSealed(s.event(caller, "operator.unseal.share", "ok", ""))
		return nil
	}
	if err := s.afterUnseal(ctx, caller); err != nil {
		// The combined key is wiped: the shares submitted so far are gone
		// with it, and the operator must be told so.
		s.seals.Seal(ctx)
		return status.Errorf(codes.Unavailable, "the last share was accepted but the unseal failed: %v. The authority stays sealed and the unseal progress was reset to 0/%d (the failure is in the audit log): fix the cause, then submit %d shares again",
			err, st.Threshold, st.Threshold)
	}
	return nil
}

func (l lifecycle) Seal(ctx context.Context) error {
	s := l.s
	st, err := s.state()
	if err != nil {
		return status.Error(codes.FailedPrecondition, "the authority is already sealed")
	}
	// Sealing is the emergency brake: it always happens. If its event
	// cannot be written the failure is logged and the event is kept to be
	// appended at the next unseal.
	ev := s.event(reqctx.From(ctx), "operator.seal", "ok", "")
	if err := st.recorder.Record(ctx, ev); err != nil {
		s.log.Error("could not audit the seal; sealing anyway", "err", err)
		s.recordSealed(ev)
	}
	s.sealInternal()
	return nil
}
