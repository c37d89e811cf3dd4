package audit

import (
	"context"
	"time"

	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Recorder is the one audit seam: the KMS, the registry, the policy store
// and the Node API hand it every event they audit. An error means the
// event is not durable, and the operation it records must not take effect
// (fail closed). Governance (anomaly detection, reports) reads the stream
// it writes, so every event has the same shape: NewEvent fills time,
// caller and request id; sensitive values go in Event.Context and are
// hashed by the recorder.
type Recorder interface {
	Record(ctx context.Context, ev Event) error
}

// RecorderFunc adapts a function to a Recorder.
type RecorderFunc func(ctx context.Context, ev Event) error

// Record calls f.
func (f RecorderFunc) Record(ctx context.Context, ev Event) error { return f(ctx, ev) }

// NewEvent returns an event of operation op with result, stamped with the
// current time (UTC) and the actor and request id of the caller in ctx
// (internal/shared/reqctx).
func NewEvent(ctx context.Context, op, result string) Event {
	c := reqctx.From(ctx)
	return Event{Time: time.Now().UTC(), RequestID: c.RequestID, Actor: c.Actor, Operation: op, Result: result}
}

// ContextFieldPrefix starts the field names of hashed context values:
// context value k is logged as Fields["context."+k].
const ContextFieldPrefix = "context."

// NewLogRecorder returns the Recorder that appends to l. It is the one
// place where context values are hashed: each Event.Context value becomes
// Fields["context.<key>"] = h.HashValue(value), so the log never holds one
// in clear.
func NewLogRecorder(l *Log, h *Hasher) Recorder { return &logRecorder{log: l, hasher: h} }

type logRecorder struct {
	log    *Log
	hasher *Hasher
}

func (r *logRecorder) Record(ctx context.Context, ev Event) error {
	_, err := r.log.Append(ctx, r.hasher.hashEvent(ev))
	return err
}

// hashEvent moves ev's Context into its Fields as HMACs, on a copy of the
// Fields map (the caller's is not changed).
func (h *Hasher) hashEvent(ev Event) Event {
	if len(ev.Context) == 0 {
		ev.Context = nil
		return ev
	}
	fields := make(map[string]string, len(ev.Fields)+len(ev.Context))
	for k, v := range ev.Fields {
		fields[k] = v
	}
	for k, v := range ev.Context {
		fields[ContextFieldPrefix+k] = h.HashValue(v)
	}
	ev.Fields, ev.Context = fields, nil
	return ev
}
