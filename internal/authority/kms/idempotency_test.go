package kms

import (
	"context"
	"testing"

	"github.com/wardproject/ward/internal/shared/reqctx"
)

// A rotation retried with the same idempotency key (its authority died
// before it could answer, so the retry ran again on another one) is
// recognised from the key record and never rotates twice; another key, or
// another caller with the same key, rotates.
func TestRotateWithIdempotencyKeyRotatesOnce(t *testing.T) {
	m, _, _ := newManager(t, openStore(t))
	ctx := context.Background()
	if _, err := m.Create(ctx, "app/k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	withKey := func(actor, key string) context.Context {
		return reqctx.With(ctx, reqctx.Caller{Actor: actor, RequestID: reqctx.NewRequestID(), IdempotencyKey: key})
	}
	for i := range 3 {
		v, err := m.Rotate(withKey("admin:uid=0", "req-1"), "app/k")
		if err != nil {
			t.Fatal(err)
		}
		if v.Latest() != 2 {
			t.Fatalf("attempt %d of request req-1: latest version %d, want 2 (rotated once)", i+1, v.Latest())
		}
	}
	if v, err := m.Rotate(withKey("admin:uid=0", "req-2"), "app/k"); err != nil || v.Latest() != 3 {
		t.Fatalf("a new key must rotate: %v, %v", v.Latest(), err)
	}
	if v, err := m.Rotate(withKey("admin:uid=1000", "req-1"), "app/k"); err != nil || v.Latest() != 4 {
		t.Fatalf("another caller's key req-1 is another request: %v, %v", v.Latest(), err)
	}
	if v, err := m.Rotate(ctx, "app/k"); err != nil || v.Latest() != 5 {
		t.Fatalf("without a key every call rotates: %v, %v", v.Latest(), err)
	}
	// The record remembers a bounded number of keys.
	for i := range maxRotationIDs + 4 {
		if _, err := m.Rotate(withKey("admin:uid=0", "bulk-"+string(rune('a'+i))), "app/k"); err != nil {
			t.Fatal(err)
		}
	}
	l, err := m.load(ctx, "app/k")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(l.rec.Rotations); n != maxRotationIDs {
		t.Fatalf("record keeps %d rotation keys, want %d", n, maxRotationIDs)
	}
}
