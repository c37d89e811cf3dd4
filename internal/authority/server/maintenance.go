package server

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/adminapi"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/buildinfo"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// maintainer serves the Maintenance admin service (adminapi.Maintainer):
// backups, barrier rotation and rekeying, each audited.
type maintainer struct{ s *Server }

var _ adminapi.Maintainer = maintainer{}

// rewriter is the state of the barrier rewrite the leader runs
// (rewriteLoop): whether it runs here and its last error, for the status.
type rewriter struct {
	kick    chan struct{} // wakes rewriteLoop after a rotation
	mu      sync.Mutex
	running bool
	lastErr string
}

func (m maintainer) record(ctx context.Context, st *unsealedState, ev audit.Event) error {
	if err := st.recorder.Record(ctx, ev); err != nil {
		return status.Errorf(codes.Unavailable, "the audit log could not record %s, so it was not done: %v", ev.Operation, err)
	}
	return nil
}

func (m maintainer) Backup(ctx context.Context) ([]byte, backup.Manifest, error) {
	s := m.s
	st, err := s.state()
	if err != nil {
		return nil, backup.Manifest{}, err
	}
	data, man, err := backup.Create(ctx, backup.Source{Raw: s.raw, Open: s.barrier.OpenRaw, Signer: st.signer,
		TrustDomain: s.cfg.TrustDomain, WardVersion: buildinfo.Read().Version})
	if err != nil {
		ev := audit.NewEvent(ctx, "operator.backup", audit.ResultError)
		ev.Error = err.Error()
		st.recorder.Record(ctx, ev)
		return nil, backup.Manifest{}, status.Errorf(codes.Unavailable, "backup: %v", err)
	}
	ev := audit.NewEvent(ctx, "operator.backup", audit.ResultOK)
	ev.Count = int(man.Entries)
	ev.Fields = map[string]string{"audit_size": strconv.FormatUint(man.Audit.Checkpoint.Size, 10),
		"payload_sha256": man.PayloadSHA256, "backend": man.Backend}
	if err := m.record(ctx, st, ev); err != nil {
		return nil, backup.Manifest{}, err // fail closed: no unaudited backup leaves
	}
	return data, man, nil
}

func (m maintainer) RotateBarrier(ctx context.Context) (adminapi.BarrierStatus, error) {
	s := m.s
	st, err := s.state()
	if err != nil {
		return adminapi.BarrierStatus{}, err
	}
	term, err := s.barrier.Rotate(ctx, time.Now())
	ev := audit.NewEvent(ctx, "operator.rotate", audit.ResultOK)
	if err != nil {
		ev.Result, ev.Error = audit.ResultError, err.Error()
		st.recorder.Record(ctx, ev)
		return adminapi.BarrierStatus{}, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	ev.Fields = map[string]string{"term": strconv.FormatUint(uint64(term), 10)}
	if err := m.record(ctx, st, ev); err != nil {
		// The term is in place; the rewrite still runs (it is audited
		// when done).
		s.kickRewrite()
		return adminapi.BarrierStatus{}, err
	}
	s.kickRewrite()
	return m.BarrierStatus(ctx)
}

func (m maintainer) BarrierStatus(ctx context.Context) (adminapi.BarrierStatus, error) {
	s := m.s
	if _, err := s.state(); err != nil {
		return adminapi.BarrierStatus{}, err
	}
	rot, err := s.barrier.RotationStatus(ctx)
	if err != nil {
		return adminapi.BarrierStatus{}, status.Errorf(codes.Unavailable, "%v", err)
	}
	s.rewrite.mu.Lock()
	defer s.rewrite.mu.Unlock()
	return adminapi.BarrierStatus{ActiveTerm: s.barrier.ActiveTerm(), Rotation: rot, Running: s.rewrite.running, Err: s.rewrite.lastErr}, nil
}

// rewriteLoop is a leader job: it runs the rewrite of a rotation whose
// rewrite is unfinished (started on any authority sharing the store,
// or interrupted by a crash or a seal), checking the stored state when
// kicked (a rotation here) and every few seconds. Its store writes are
// fenced on the leadership (etcd), so two authorities never rewrite at
// once.
func (s *Server) rewriteLoop(ctx context.Context, st *unsealedState) {
	t := time.NewTicker(rewriteCheckInterval)
	defer t.Stop()
	for {
		if rot, err := s.barrier.RotationStatus(ctx); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("reading the barrier rotation state", "err", err)
			}
		} else if rot != nil && !rot.Done {
			s.runRewrite(ctx, st)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.rewrite.kick:
		}
	}
}

// rewriteCheckInterval is how often the leader looks for an unfinished
// barrier rewrite.
const rewriteCheckInterval = 5 * time.Second

// runRewrite runs the barrier rewrite to its end (or until ctx ends) and
// audits how it ended.
func (s *Server) runRewrite(ctx context.Context, st *unsealedState) {
	s.rewrite.mu.Lock()
	s.rewrite.running, s.rewrite.lastErr = true, ""
	s.rewrite.mu.Unlock()
	ctx = reqctx.With(ctx, reqctx.Caller{Actor: "system:barrier-rewrite", RequestID: reqctx.NewRequestID()})
	res, err := s.barrier.Rewrite(ctx, time.Now, nil)
	s.rewrite.mu.Lock()
	s.rewrite.running = false
	if err != nil && ctx.Err() == nil {
		s.rewrite.lastErr = err.Error()
	}
	s.rewrite.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return // sealed or no longer the leader: resumed by the next one
	case err != nil:
		s.log.Error("barrier rewrite stopped; it is retried", "err", err)
		ev := audit.NewEvent(ctx, "operator.rotate.rewrite", audit.ResultError)
		ev.Error = err.Error()
		st.recorder.Record(ctx, ev)
	case res != nil && res.Done:
		ev := audit.NewEvent(ctx, "operator.rotate.rewrite", audit.ResultOK)
		ev.Count = int(res.Rewritten)
		ev.Fields = map[string]string{"term": strconv.FormatUint(uint64(res.Term), 10), "failed": strconv.FormatInt(res.Failed, 10)}
		if res.Failed > 0 {
			ev.Result, ev.Error = audit.ResultError, fmt.Sprintf("%d values could not be opened and stay under older terms (first: %v)", res.Failed, res.FailedKeys)
		}
		if err := st.recorder.Record(ctx, ev); err != nil {
			s.log.Error("could not audit the end of the barrier rewrite", "err", err)
		}
		s.log.Info("barrier rewrite finished", "term", res.Term, "rewritten", res.Rewritten, "failed", res.Failed)
	}
}

// kickRewrite wakes the leader's rewrite loop (if it runs here).
func (s *Server) kickRewrite() {
	select {
	case s.rewrite.kick <- struct{}{}:
	default:
	}
}

func (m maintainer) rekeyEvent(ctx context.Context, op string, err error) audit.Event {
	ev := audit.NewEvent(ctx, op, audit.ResultOK)
	if err != nil {
		ev.Result, ev.Error = audit.ResultError, err.Error()
	}
	return ev
}

func (m maintainer) RekeyStart(ctx context.Context, opts seal.InitOptions) (seal.RekeyStatus, error) {
	st, err := m.s.state()
	if err != nil {
		return seal.RekeyStatus{}, err
	}
	rs, err := m.s.seals.RekeyStart(ctx, opts)
	ev := m.rekeyEvent(ctx, "operator.rekey.start", err)
	ev.Fields = map[string]string{"shares": strconv.Itoa(opts.Shares), "threshold": strconv.Itoa(opts.Threshold)}
	if aerr := m.record(ctx, st, ev); aerr != nil {
		m.s.seals.RekeyCancel()
		return seal.RekeyStatus{}, aerr
	}
	if err != nil {
		return rs, errs.ToStatus(err)
	}
	return rs, nil
}

func (m maintainer) RekeySubmit(ctx context.Context, nonce, share string) (seal.RekeyStatus, []string, error) {
	st, err := m.s.state()
	if err != nil {
		return seal.RekeyStatus{}, nil, err
	}
	rs, shares, err := m.s.seals.RekeySubmit(ctx, nonce, share)
	op := "operator.rekey.share"
	if len(shares) > 0 || (err != nil && !rs.Started) {
		op = "operator.rekey"
	}
	if aerr := m.record(ctx, st, m.rekeyEvent(ctx, op, err)); aerr != nil {
		if len(shares) > 0 {
			// The rekey happened: the new shares must reach the operator,
			// or the authority could never be unsealed again.
			m.s.log.Error("the rekey completed but could not be audited", "err", aerr)
		} else {
			return seal.RekeyStatus{}, nil, aerr
		}
	}
	if err != nil {
		return rs, nil, errs.ToStatus(err)
	}
	if len(shares) > 0 {
		m.s.log.Info("unseal shares replaced (rekey)", "actor", reqctx.From(ctx).Actor)
	}
	return rs, seal.InitResult{Shares: shares}.Encoded(), nil
}

func (m maintainer) RekeyCancel(ctx context.Context) (seal.RekeyStatus, error) {
	st, err := m.s.state()
	if err != nil {
		return seal.RekeyStatus{}, err
	}
	if !m.s.seals.RekeyCancel() {
		return seal.RekeyStatus{}, errs.ToStatus(seal.ErrNoRekey)
	}
	if err := m.record(ctx, st, m.rekeyEvent(ctx, "operator.rekey.cancel", nil)); err != nil {
		return seal.RekeyStatus{}, err
	}
	return seal.RekeyStatus{}, nil
}

func (m maintainer) RekeyStatus(ctx context.Context) (seal.RekeyStatus, error) {
	if _, err := m.s.state(); err != nil {
		return seal.RekeyStatus{}, err
	}
	rs, err := m.s.seals.RekeyStatus(ctx)
	if err != nil {
		return rs, errs.ToStatus(err)
	}
	return rs, nil
}
