package reqctx

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestRequestIDFrom(t *testing.T) {
	cases := []struct {
		name, header string
		kept         bool
	}{
		{"client id kept", "abc-123_X", true},
		{"too long", strings.Repeat("a", 65), false},
		{"bad characters", "a b;c", false},
		{"empty", "", false},
	}
	for _, c := range cases {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-request-id", c.header))
		got := RequestIDFrom(ctx)
		if (got == c.header) != c.kept || got == "" {
			t.Errorf("%s: got %q", c.name, got)
		}
	}
	if a, b := RequestIDFrom(context.Background()), RequestIDFrom(context.Background()); len(a) != 32 || a == b {
		t.Fatalf("new ids: %q %q", a, b)
	}
}

type otherKey struct{}

func TestWithFrom(t *testing.T) {
	if c := From(context.Background()); c.Actor != "unknown" {
		t.Fatalf("empty context: %+v", c)
	}
	base := context.WithValue(context.Background(), otherKey{}, "v")
	ctx := With(base, Caller{Actor: "a", RequestID: "r1"})
	ctx = context.WithValue(ctx, otherKey{}, "w")
	inner := With(ctx, Caller{Actor: "b", RequestID: "r2", IdempotencyKey: "k"})
	if c := From(ctx); c != (Caller{Actor: "a", RequestID: "r1"}) {
		t.Fatalf("outer: %+v", c)
	}
	if c := From(inner); c != (Caller{Actor: "b", RequestID: "r2", IdempotencyKey: "k"}) {
		t.Fatalf("inner: %+v", c)
	}
	if v := inner.Value(otherKey{}); v != "w" {
		t.Fatalf("other values: %v", v)
	}
	// Cancellation and deadlines pass through (no goroutine per call).
	cctx, cancel := context.WithCancel(context.Background())
	w := With(cctx, Caller{Actor: "a"})
	child, ccancel := context.WithCancel(w)
	defer ccancel()
	cancel()
	<-child.Done()
	if From(context.WithoutCancel(w)).Actor != "a" {
		t.Fatal("WithoutCancel lost the caller")
	}
	if n := testing.AllocsPerRun(100, func() { _ = From(With(base, Caller{Actor: "a"})) }); n > 1 {
		t.Fatalf("With+From allocates %v times, want 1", n)
	}
}
