package server

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// TestIdempotencyRecordsHoldNoSecrets runs the attack on the stored
// answers of deduplicated calls: a join token is stored only as its hash,
// so an answer kept for retries must not put it (nor a rekey's new shares)
// into the store, where a backup or any later copy of the storage read
// with the barrier keys would give it away. A retry with the same key
// still gets the same token, from this authority's memory.
func TestIdempotencyRecordsHoldNoSecrets(t *testing.T) {
	e := startIdentity(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), reqctx.IdempotencyHeader, "join-token-once")
	tok, err := e.agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{TtlSeconds: 600, AgentPath: "rack1/node-1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{TtlSeconds: 600, AgentPath: "rack1/node-1"})
	if err != nil || again.Token != tok.Token {
		t.Fatalf("retry with the same idempotency key: %v, %v (want the first token again)", again, err)
	}
	kvs, err := e.srv.barrier.Store().List(context.Background(), requestsPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) == 0 {
		t.Fatal("the call was not deduplicated (no idempotency record)")
	}
	for _, kv := range kvs {
		var rec requestRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(kv.Value, []byte(tok.Token)) || bytes.Contains(rec.Answer, []byte(tok.Token)) {
			t.Fatalf("the idempotency record %s holds the join token", kv.Key)
		}
	}
	if _, err := e.attestJoin(t, tok.Token); err != nil {
		t.Fatalf("the token does not attest: %v", err)
	}
	// Once the answer left this authority's memory, a retry is told so.
	e.srv.held.Range(func(k, v any) bool {
		e.srv.held.Store(k, heldAnswer{msg: v.(heldAnswer).msg, until: time.Now().Add(-time.Second)})
		return true
	})
	if _, err := e.agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{TtlSeconds: 600, AgentPath: "rack1/node-1"}); err == nil {
		t.Fatal("a retry after the answer expired got an answer")
	}
	// Sealing forgets every held answer.
	if _, err := e.agents.CreateJoinToken(metadata.AppendToOutgoingContext(context.Background(), reqctx.IdempotencyHeader, "another"),
		&wardv1.CreateJoinTokenRequest{TtlSeconds: 600, AgentPath: "rack1/node-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := wardv1.NewOperatorClient(e.conn).Seal(context.Background(), &wardv1.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	e.srv.held.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d secret answers held after the seal", n)
	}
}

func TestSecretAnswersNamed(t *testing.T) {
	for _, m := range []string{"/ward.v1.Maintenance/Rekey", "/ward.v1.Agents/CreateJoinToken"} {
		if reqctx.RetryOf(m) == reqctx.RetryWithKey && !secretAnswers[m] {
			t.Errorf("%s answers with secrets but its answer would be stored", m)
		}
	}
}
