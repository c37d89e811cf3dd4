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
