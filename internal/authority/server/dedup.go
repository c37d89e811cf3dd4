package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Deduplication of retried state changes (docs/ha.md). A client that may
// retry a change (to this or another authority) sends an idempotency key
// (reqctx.IdempotencyHeader); the first call with a key claims
// requests/<sha256 of caller, method and key> behind the barrier
// (create-only, so of two authorities receiving the same key at once only
// one runs the call), runs it and stores the answer there; every later
// call with that key gets the stored answer. A call still running
// elsewhere is answered Aborted ("retry"); one whose authority died is
// taken over. Entries are purged by the leader after requestTTL.
const (
	requestsPrefix = "requests/"
	// requestTTL is how long an answer is kept for retries.
	requestTTL = 24 * time.Hour
	// requestStale is when a claimed but unanswered entry is taken over
	// even if its authority still looks alive.
	requestStale = 2 * time.Minute
	// maxAnswer bounds a stored answer (larger ones are not kept: the
	// call ran, a retry gets Aborted with the reason).
	maxAnswer = 1 << 20
)

// secretAnswers are the methods whose answers carry secrets the
// authority otherwise never stores: a rekey's new unseal shares ("shown
// once"), a join token (stored only as its hash). Their answers are
// never written to the store (where the barrier keys of an old root key
// and any later copy of the storage, a backup included, would read them):
// the record says the call ran and its answer is kept in this
// authority's memory for secretAnswerTTL, long enough for the client's
// retries, which go to the same authority (a rekey session lives in one
// authority only).
var secretAnswers = map[string]bool{
	"/ward.v1.Maintenance/Rekey":      true,
	"/ward.v1.Agents/CreateJoinToken": true,
}

const secretAnswerTTL = 10 * time.Minute

type heldAnswer struct {
	msg   proto.Message
	until time.Time
}

// holdAnswer keeps a secret answer in this authority's memory (s.held,
// by record path), dropping expired ones.
func (s *Server) holdAnswer(path string, m proto.Message, now time.Time) {
	s.held.Range(func(k, v any) bool {
		if now.After(v.(heldAnswer).until) {
			s.held.Delete(k)
		}
		return true
	})
	s.held.Store(path, heldAnswer{msg: m, until: now.Add(secretAnswerTTL)})
}

// forgetHeldAnswers drops every held secret answer (at seal).
func (s *Server) forgetHeldAnswers() {
	s.held.Range(func(k, _ any) bool {
		s.held.Delete(k)
		return true
	})
}

type requestRecord struct {
	State   string    `json:"state"` // "running" or "done"
	Owner   string    `json:"owner"` // member name of the authority running it
	Started time.Time `json:"started"`
	Method  string    `json:"method"`
	// Request is the sha256 of the request message: a key reused for
	// another request is refused, never answered with the first answer.
	Request []byte `json:"request"`
	Code    uint32 `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	Answer  []byte `json:"answer,omitempty"` // anypb of the response
	// Held: the answer carries secrets and is kept only in the memory of
	// Owner (secretAnswers).
	Held bool `json:"held,omitempty"`
}

// dedupUnary deduplicates calls that carry an idempotency key and change
// state (reqctx.RetryOf == RetryWithKey).
func (s *Server) dedupUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	caller := reqctx.From(ctx)
	if caller.IdempotencyKey == "" || reqctx.RetryOf(info.FullMethod) != reqctx.RetryWithKey || s.Sealed() {
		return h(ctx, req)
	}
	msg, ok := req.(proto.Message)
	if !ok {
		return h(ctx, req)
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "encoding the request: %v", err)
	}
	reqSum := sha256.Sum256(body)
	id := sha256.Sum256([]byte(caller.Actor + "\x00" + info.FullMethod + "\x00" + caller.IdempotencyKey))
	path := requestsPrefix + hex.EncodeToString(id[:])
	bs := s.barrier.Store()
	self := s.memberName()
	for attempt := 0; attempt < 8; attempt++ {
		kv, err := bs.Get(ctx, path)
		var expect int64
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, status.Errorf(codes.Unavailable, "reading the idempotency record of request %s: %v; retry", caller.IdempotencyKey, err)
		default:
			var rec requestRecord
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				return nil, status.Errorf(codes.DataLoss, "the idempotency record of request %s is unreadable: %v", caller.IdempotencyKey, err)
			}
			if !slices.Equal(rec.Request, reqSum[:]) || rec.Method != info.FullMethod {
				return nil, status.Errorf(codes.InvalidArgument, "idempotency key %s was already used for another request by %s: use a new key for each call", caller.IdempotencyKey, caller.Actor)
			}
			if rec.State == "done" && rec.Held {
				if v, ok := s.held.Load(path); ok && time.Now().Before(v.(heldAnswer).until) {
					return proto.Clone(v.(heldAnswer).msg), nil
				}
				// Unavailable: a failover client tries the other authorities,
				// the one holding the answer among them.
				return nil, status.Errorf(codes.Unavailable, "request %s ran on authority %s; its answer carries secrets and is kept only in that authority's memory (for %s): retry there", caller.IdempotencyKey, rec.Owner, secretAnswerTTL)
			}
			if rec.State == "done" {
				return replay(rec)
			}
			if s.requestAlive(ctx, rec, path) {
				return nil, status.Errorf(codes.Aborted, "request %s is still running on authority %s: retry (the answer is kept for retries)", caller.IdempotencyKey, rec.Owner)
			}
			expect = kv.Revision // its authority died: take it over
		}
		rec := requestRecord{State: "running", Owner: self, Started: time.Now().UTC(), Method: info.FullMethod, Request: reqSum[:]}
		b, _ := json.Marshal(rec)
		rev, err := bs.CompareAndSwap(ctx, path, b, expect)
		if errors.Is(err, store.ErrConflict) {
			continue // another authority claimed it first: read its state
		}
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "claiming request %s: %v; retry", caller.IdempotencyKey, err)
		}
		s.inflight.Store(path, true)
		resp, herr := h(ctx, req)
		if !s.finishRequest(path, rev, rec, resp, herr) {
			// etcd did not take the answer (an election, a lost member):
			// keep trying in the background; until then retries of this
			// key are told it is still running here.
			go func() {
				defer s.inflight.Delete(path)
				for delay := 100 * time.Millisecond; time.Since(rec.Started) < requestStale; delay = min(2*delay, 5*time.Second) {
					time.Sleep(delay)
					if s.finishRequest(path, rev, rec, resp, herr) {
						return
					}
				}
			}()
			return resp, herr
		}
		s.inflight.Delete(path)
		return resp, herr
	}
	return nil, status.Errorf(codes.Aborted, "request %s is contended between authorities: retry", caller.IdempotencyKey)
}

// requestAlive reports whether the authority running rec is still there.
func (s *Server) requestAlive(ctx context.Context, rec requestRecord, path string) bool {
	if time.Since(rec.Started) > requestStale {
		return false
	}
	if rec.Owner == s.memberName() {
		_, ok := s.inflight.Load(path)
		return ok
	}
	st, err := s.ClusterStatus(ctx)
	if err != nil {
		return true // cannot tell: let the client retry
	}
	for _, m := range st.Members {
		if m.Name == rec.Owner {
			return true
		}
	}
	return false
}

// finishRequest stores the answer of a claimed request, or releases the
// claim when the outcome says nothing happened or is unknown (a retry then
// runs it again; the KMS recognises a rotation it already made by the key).
// It reports whether the store took it (or it no longer matters).
func (s *Server) finishRequest(path string, rev int64, rec requestRecord, resp any, herr error) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bs := s.barrier.Store()
	st, _ := status.FromError(herr)
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted, codes.Unknown, codes.Internal:
		if _, err := bs.Batch(ctx, []store.Op{{Key: path, Delete: true, ExpectRevision: rev}}); err != nil && !errors.Is(err, store.ErrConflict) {
			s.log.Warn("releasing an idempotency record", "path", path, "err", err)
			return s.Sealed()
		}
		return true
	}
	rec.State = "done"
	rec.Code, rec.Message = uint32(st.Code()), st.Message()
	if m, ok := resp.(proto.Message); ok && herr == nil && secretAnswers[rec.Method] {
		s.holdAnswer(path, proto.Clone(m), time.Now())
		rec.Held = true
	} else if herr == nil {
		if m, ok := resp.(proto.Message); ok {
			if a, err := anypb.New(m); err == nil {
				if b, err := proto.Marshal(a); err == nil && len(b) <= maxAnswer {
					rec.Answer = b
				}
			}
		}
		if rec.Answer == nil {
			rec.Code, rec.Message = uint32(codes.Aborted), fmt.Sprintf("request ran (method %s) but its answer was too large to keep for retries: read the result instead", rec.Method)
		}
	}
	b, _ := json.Marshal(rec)
	if _, err := bs.CompareAndSwap(ctx, path, b, rev); err != nil && !errors.Is(err, store.ErrConflict) {
		s.log.Warn("storing the answer of a request for its retries", "path", path, "err", err)
		return s.Sealed()
	}
	return true
}

func replay(rec requestRecord) (any, error) {
	if c := codes.Code(rec.Code); c != codes.OK {
		return nil, status.Error(c, rec.Message)
	}
	var a anypb.Any
	if err := proto.Unmarshal(rec.Answer, &a); err != nil {
		return nil, status.Errorf(codes.DataLoss, "the stored answer of this request is unreadable: %v", err)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, status.Errorf(codes.DataLoss, "the stored answer of this request is unreadable: %v", err)
	}
	return m, nil
}

// purgeRequests deletes idempotency records older than requestTTL (the
// leader's job) every ten minutes, and once at the start.
func (s *Server) purgeRequests(ctx context.Context) {
	for {
		s.purgeRequestsOnce(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Minute):
		}
	}
}

func (s *Server) purgeRequestsOnce(ctx context.Context, now time.Time) int {
	bs := s.barrier.Store()
	kvs, err := bs.List(ctx, requestsPrefix)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("listing idempotency records to purge", "err", err)
		}
		return 0
	}
	n := 0
	for _, kv := range kvs {
		var rec requestRecord
		if json.Unmarshal(kv.Value, &rec) == nil && now.Sub(rec.Started) < requestTTL {
			continue
		}
		if _, err := bs.Batch(ctx, []store.Op{{Key: kv.Key, Delete: true, ExpectRevision: kv.Revision}}); err == nil {
			n++
		}
	}
	return n
}
