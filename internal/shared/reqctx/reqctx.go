// Package reqctx carries who is calling and the request id through a
// context, from the API layer down to the services that audit them.
package reqctx

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"

	"google.golang.org/grpc/metadata"
)

// Caller identifies the origin of a request.
type Caller struct {
	// Actor names who acts: "admin:uid=1000" on the admin socket, a
	// SPIFFE ID over mTLS, "system:rotation" for scheduled jobs.
	Actor string
	// RequestID correlates the request with its audit events and errors.
	RequestID string
	// IdempotencyKey is the client's key for a state change it may retry
	// (IdempotencyHeader), or "".
	IdempotencyKey string
}

type key struct{}

// callerCtx carries a Caller in one allocation per call (context.WithValue
// with a Caller takes two: the node and the boxed Caller). It answers key{}
// with a pointer to its own copy, which nothing writes through.
type callerCtx struct {
	context.Context
	c Caller
}

func (c *callerCtx) Value(k any) any {
	if _, ok := k.(key); ok {
		return &c.c
	}
	return c.Context.Value(k)
}

func (c *callerCtx) String() string { return "reqctx.With(" + c.c.Actor + ")" }

// With returns ctx carrying c.
func With(ctx context.Context, c Caller) context.Context { return &callerCtx{Context: ctx, c: c} }

// From returns the caller in ctx; an unknown caller has Actor "unknown".
func From(ctx context.Context) Caller {
	if c, ok := ctx.Value(key{}).(*Caller); ok {
		return *c
	}
	return Caller{Actor: "unknown"}
}

// NewRequestID returns a random 128-bit request id in hex. It is no secret
// (clients choose their own in x-request-id, and an idempotency key counts
// only for the caller that sent it): what matters is that two never
// collide, which 128 random bits make certain. They come from the
// runtime's per-thread ChaCha8 generator (math/rand/v2), seeded from the
// system: no system call on each of the authority's calls that carry none.
func NewRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	var h [32]byte
	hex.Encode(h[:], b[:])
	return string(h[:])
}

// RequestIDFrom returns the request id a gRPC client sent in the
// x-request-id header (1–64 characters of [A-Za-z0-9_-]), or a new one.
func RequestIDFrom(ctx context.Context) string {
	// ValueFromIncomingContext reads one key without copying the whole
	// metadata (FromIncomingContext does, on every call).
	if v := metadata.ValueFromIncomingContext(ctx, "x-request-id"); len(v) == 1 && validRequestID(v[0]) {
		return v[0]
	}
	return NewRequestID()
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
