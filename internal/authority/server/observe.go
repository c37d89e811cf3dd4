package server

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wardproject/ward/internal/authority/audit"
)

// SetAuditObserver makes fn see every event the authority's recorder (the
// one audit seam of the KMS, the registry, the policy store and the Node
// API) has committed to the audit log, right after Record returned. fn
// runs on the audit path: it must return at once (queue the event, drop it
// when the queue is full). Call it before Start; the CLI wires the anomaly
// detector here (internal/governance/anomaly, docs/anomaly.md), which the
// authority itself never imports.
func (s *Server) SetAuditObserver(fn func(audit.Event)) { s.observer = fn }

// observedRecorder calls the observer after each committed event.
type observedRecorder struct {
	audit.Recorder
	fn func(audit.Event)
}

func (r observedRecorder) Record(ctx context.Context, ev audit.Event) error {
	if err := r.Recorder.Record(ctx, ev); err != nil {
		return err
	}
	ev.Context = nil // hashed into Fields by the log recorder; never handed on in clear
	r.fn(ev)
	return nil
}

// RecordEvent records ev through the unsealed authority's recorder, for
// parts wired beside it (the anomaly detector's "anomaly.alert" events).
// It fails while sealed.
func (s *Server) RecordEvent(ctx context.Context, ev audit.Event) error {
	st, err := s.state()
	if err != nil {
		return err
	}
	return st.recorder.Record(ctx, ev)
}

// KeyClassification returns the classification of KMS key name, or ""
// when sealed or the key is unknown.
func (s *Server) KeyClassification(ctx context.Context, name string) string {
	m, err := s.kmsManager()
	if err != nil || m == nil {
		return ""
	}
	c, err := m.Classification(ctx, name)
	if err != nil {
		return ""
	}
	return c
}

// Registerer is the registry /metrics serves, for collectors of parts
// wired beside the authority.
func (s *Server) Registerer() prometheus.Registerer { return s.metrics.reg }

// ReadRecentAudit calls fn with up to the last n events of the audit log,
// oldest first (records that cannot be read or decoded are skipped). The
// anomaly detector primes its baseline with them. It fails while sealed.
func (s *Server) ReadRecentAudit(ctx context.Context, n uint64, fn func(audit.Event)) error {
	st, err := s.state()
	if err != nil {
		return err
	}
	size := st.audit.Size()
	from := uint64(0)
	if size > n {
		from = size - n
	}
	return st.audit.Read(ctx, from, size, func(r audit.Record) error {
		if r.Err != nil {
			return nil
		}
		if ev, err := audit.DecodeEvent(r.Leaf); err == nil {
			fn(ev)
		}
		return nil
	})
}
