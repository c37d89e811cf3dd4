package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Failover across several authorities (docs/ha.md). Dial("a,b,c") opens
// one connection per address and sends each call to the authority that
// answered last, moving on to the next one when the call may be repeated:
//   - reads and calls whose repetition is harmless (KMS encrypt, decrypt,
//     data keys, rewrap) on Unavailable, a per-attempt timeout, or a
//     sealed authority;
//   - state changes the same way, but always with an idempotency key
//     (reqctx.IdempotencyHeader, the same on every attempt) that the
//     authorities deduplicate, so a retried rotation rotates once; an
//     Aborted answer ("still running elsewhere") is retried too;
//   - operator lifecycle calls (init, unseal, seal) only when the
//     connection could not be made (the request never left).
//
// Retries go on until the call's context ends (at most MaxRetryTime
// without a deadline).

// DefaultAttemptTimeout bounds one attempt of a call that may be retried
// (an authority cut off from etcd would otherwise hold it until the
// caller's deadline).
const DefaultAttemptTimeout = 10 * time.Second

// MaxRetryTime bounds the retries of a call whose context has no deadline.
const MaxRetryTime = time.Minute

type failover struct {
	addrs    []string
	conns    []*grpc.ClientConn
	pref     atomic.Int32
	attempt  time.Duration
	failures atomic.Uint64 // attempts that failed over (tests, metrics)
}

func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	mode := reqctx.RetryOf(method)
	if mode == reqctx.RetryWithKey {
		ctx = withIdempotencyKey(ctx)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, MaxRetryTime)
		defer cancel()
	}
	start := int(f.pref.Load())
	n := len(f.conns)
	var err error
	for i := 0; ; i++ {
		idx := (start + i) % n
		actx, cancel := ctx, context.CancelFunc(func() {})
		if mode != reqctx.RetryNever && n > 1 {
			actx, cancel = context.WithTimeout(ctx, f.attempt)
		}
		err = f.conns[idx].Invoke(actx, method, args, reply, opts...)
		cancel()
		if err == nil {
			f.pref.Store(int32(idx))
			return nil
		}
		if ctx.Err() != nil || !retryable(mode, err) {
			return err
		}
		f.failures.Add(1)
		if (i+1)%n == 0 || n == 1 {
			// A whole round failed: pause before the next (an election
			// or an etcd member change takes a moment).
			d := time.Duration(100+rand.IntN(200)) * time.Millisecond * time.Duration(min((i+1)/n, 10))
			select {
			case <-ctx.Done():
				return err
			case <-time.After(d):
			}
		}
	}
}

func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	start := int(f.pref.Load())
	var err error
	for i := range f.conns {
		idx := (start + i) % len(f.conns)
		var cs grpc.ClientStream
		if cs, err = f.conns[idx].NewStream(ctx, desc, method, opts...); err == nil {
			return cs, nil
		}
		if ctx.Err() != nil || !retryable(reqctx.RetryNever, err) {
			return nil, err
		}
	}
	return nil, err
}

// retryable says whether err, for a method of retry mode, may be retried on
// another authority.
func retryable(mode reqctx.Retry, err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	msg := s.Message()
	notSent := s.Code() == codes.Unavailable && (strings.Contains(msg, "while dialing") || strings.Contains(msg, "connection refused") ||
		strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "refusing to send"))
	if mode == reqctx.RetryNever {
		return notSent
	}
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	case codes.Aborted:
		return mode == reqctx.RetryWithKey
	case codes.FailedPrecondition:
		// A sealed authority did nothing; another may be unsealed.
		return strings.Contains(msg, "authority is sealed")
	}
	return false
}

// withIdempotencyKey adds an idempotency key (and the same x-request-id,
// so the audit events of every attempt share it) unless the caller set one.
func withIdempotencyKey(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md.Get(reqctx.IdempotencyHeader)) > 0 {
		return ctx
	}
	id := reqctx.NewRequestID()
	if v := md.Get("x-request-id"); len(v) == 1 {
		id = v[0] + "-" + id[:8]
		if len(id) > 64 {
			id = reqctx.NewRequestID()
		}
		return metadata.AppendToOutgoingContext(ctx, reqctx.IdempotencyHeader, id)
	}
	return metadata.AppendToOutgoingContext(ctx, reqctx.IdempotencyHeader, id, "x-request-id", id)
}

// WithIdempotencyKey returns ctx carrying key as the idempotency key of the
// next state change made with it (the client makes one per call when none
// is given). Retrying a call with the same key never applies it twice.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, reqctx.IdempotencyHeader, key)
}

func (f *failover) Close() error {
	var errs []error
	for _, c := range f.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
