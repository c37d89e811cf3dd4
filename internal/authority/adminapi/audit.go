package adminapi

import (
	"context"
	"encoding/json"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

type auditService struct {
	wardv1.UnimplementedAuditServer
	a *api
}

func (a *auditService) log() (*audit.Log, error) {
	sv, err := a.a.us.Services()
	if err != nil {
		return nil, err
	}
	return sv.Audit, nil
}

func sendRange(ctx context.Context, l *audit.Log, from, to uint64, send func(*wardv1.AuditRecord) error) error {
	if from >= to {
		return nil
	}
	return l.Read(ctx, from, to, func(r audit.Record) error {
		m := &wardv1.AuditRecord{Seq: r.Seq, Leaf: r.Leaf}
		if r.Err != nil {
			m.Error = r.Err.Error()
			m.Missing = errors.Is(r.Err, store.ErrNotFound)
		}
		return send(m)
	})
}

func (a *auditService) Read(r *wardv1.ReadAuditRequest, ss wardv1.Audit_ReadServer) error {
	l, err := a.log()
	if err != nil {
		return err
	}
	end := r.End
	if end == 0 {
		cp, err := l.Head(ss.Context())
		if err != nil {
			return status.Errorf(codes.Unavailable, "reading the audit head: %v", err)
		}
		end = cp.Size
	}
	if r.Start > end {
		return status.Errorf(codes.InvalidArgument, "start %d is past the end of the log (%d events)", r.Start, end)
	}
	return sendRange(ss.Context(), l, r.Start, end, ss.Send)
}

func (a *auditService) Tail(r *wardv1.TailAuditRequest, ss wardv1.Audit_TailServer) error {
	l, err := a.log()
	if err != nil {
		return err
	}
	ctx := ss.Context()
	size := l.Size()
	from := uint64(0)
	if r.Last < size {
		from = size - r.Last
	}
	if err := sendRange(ctx, l, from, size, ss.Send); err != nil {
		return err
	}
	for r.Follow {
		next, err := l.Wait(ctx, size)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return status.Errorf(codes.Unavailable, "audit log closed (sealed?): %v", err)
		}
		if err := sendRange(ctx, l, size, next, ss.Send); err != nil {
			return err
		}
		size = next
	}
	return nil
}

func (a *auditService) Checkpoint(ctx context.Context, _ *wardv1.CheckpointRequest) (*wardv1.CheckpointResponse, error) {
	l, err := a.log()
	if err != nil {
		return nil, err
	}
	cp, err := l.Head(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading the audit head: %v", err)
	}
	b, err := checkpoint.Encode(cp)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	pem, err := checkpoint.MarshalPublicKeyPEM(l.PublicKey())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &wardv1.CheckpointResponse{Checkpoint: b, PublicKeyPem: pem}
	if sv, err := a.a.us.Services(); err == nil && sv.Federation != nil {
		for _, c := range sv.Federation.Cosignatures() {
			cj, err := json.Marshal(c.Cosignature)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			resp.Cosignatures = append(resp.Cosignatures, &wardv1.WitnessCosignature{TrustDomain: c.TrustDomain.Name(), Cosignature: cj,
				PublicKeyPem: c.PublicKeyPEM, Received: apiconv.Timestamp(c.ReceivedAt)})
		}
	}
	return resp, nil
}

func (a *auditService) Hash(ctx context.Context, r *wardv1.HashRequest) (*wardv1.HashResponse, error) {
	sv, err := a.a.us.Services()
	if err != nil {
		return nil, err
	}
	// Hashing is an oracle on audited values: audit its use.
	if err := sv.Recorder.Record(ctx, event(ctx, "audit.hash", "ok", "")); err != nil {
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable: %v", err)
	}
	return &wardv1.HashResponse{Hash: sv.Hasher.HashValue(r.Value)}, nil
}
