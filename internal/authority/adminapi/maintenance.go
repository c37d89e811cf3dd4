package adminapi

import (
	"context"
	"encoding/json"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/seal"
)

// Maintainer is what the Maintenance service drives: backups, barrier
// rotation and rekeying (the server implements it and audits each call).
// Its errors are gRPC status errors or errs kinds.
type Maintainer interface {
	// Backup returns a complete backup file and its manifest.
	Backup(ctx context.Context) ([]byte, backup.Manifest, error)
	// RotateBarrier starts a new barrier term and its background rewrite.
	RotateBarrier(ctx context.Context) (BarrierStatus, error)
	// BarrierStatus reports the active term and the rewrite's progress.
	BarrierStatus(ctx context.Context) (BarrierStatus, error)
	// RekeyStart, RekeySubmit, RekeyCancel and RekeyStatus drive a rekey
	// of the unseal shares (seal.Manager's rekey, audited).
	RekeyStart(ctx context.Context, opts seal.InitOptions) (seal.RekeyStatus, error)
	RekeySubmit(ctx context.Context, nonce, share string) (seal.RekeyStatus, []string, error)
	RekeyCancel(ctx context.Context) (seal.RekeyStatus, error)
	RekeyStatus(ctx context.Context) (seal.RekeyStatus, error)
}

// BarrierStatus is the barrier's term and its latest rotation.
type BarrierStatus struct {
	ActiveTerm uint32
	Rotation   *barrier.RotationState // nil: never rotated
	Running    bool                   // a rewrite runs in this authority
	Err        string                 // the last rewrite's error, if any
}

type maintenanceService struct {
	wardv1.UnimplementedMaintenanceServer
	m Maintainer
}

// backupChunk is the size of one CreateBackup message.
const backupChunk = 1 << 20

func (s *maintenanceService) CreateBackup(_ *wardv1.CreateBackupRequest, stream wardv1.Maintenance_CreateBackupServer) error {
	data, man, err := s.m.Backup(stream.Context())
	if err != nil {
		return err
	}
	mj, err := json.Marshal(man)
	if err != nil {
		return err
	}
	for off := 0; ; off += backupChunk {
		end := min(off+backupChunk, len(data))
		msg := &wardv1.BackupChunk{Data: data[off:end]}
		if end == len(data) {
			msg.ManifestJson = string(mj)
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		if end == len(data) {
			return nil
		}
	}
}

func barrierStatusProto(st BarrierStatus) *wardv1.BarrierStatus {
	out := &wardv1.BarrierStatus{ActiveTerm: st.ActiveTerm, RewriteRunning: st.Running, Error: st.Err}
	if r := st.Rotation; r != nil {
		out.RotationTerm, out.RewriteDone, out.Total, out.Scanned, out.Rewritten = r.Term, r.Done, r.Total, r.Scanned, r.Rewritten
		out.Failed, out.FailedKeys, out.Pass = r.Failed, r.FailedKeys, int32(r.Pass)
	}
	return out
}

func (s *maintenanceService) RotateBarrier(ctx context.Context, _ *wardv1.RotateBarrierRequest) (*wardv1.BarrierStatus, error) {
	st, err := s.m.RotateBarrier(ctx)
	if err != nil {
		return nil, err
	}
	return barrierStatusProto(st), nil
}

func (s *maintenanceService) GetBarrierStatus(ctx context.Context, _ *wardv1.BarrierStatusRequest) (*wardv1.BarrierStatus, error) {
	st, err := s.m.BarrierStatus(ctx)
	if err != nil {
		return nil, err
	}
	return barrierStatusProto(st), nil
}

func (s *maintenanceService) Rekey(ctx context.Context, r *wardv1.RekeyRequest) (*wardv1.RekeyResponse, error) {
	var (
		st     seal.RekeyStatus
		shares []string
		err    error
	)
	switch {
	case r.Start:
		st, err = s.m.RekeyStart(ctx, seal.InitOptions{Shares: int(r.Shares), Threshold: int(r.Threshold)})
	case r.Cancel:
		st, err = s.m.RekeyCancel(ctx)
	case r.Share != "":
		st, shares, err = s.m.RekeySubmit(ctx, r.Nonce, r.Share)
	default:
		st, err = s.m.RekeyStatus(ctx)
	}
	if err != nil {
		return nil, err
	}
	return &wardv1.RekeyResponse{Started: st.Started, Nonce: st.Nonce, Shares: uint32(st.Shares), Threshold: uint32(st.Threshold),
		OldThreshold: uint32(st.OldThreshold), Progress: uint32(st.Progress), NewShares: shares, Complete: len(shares) > 0}, nil
}
