package server

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/wardproject/ward/internal/shared/reqctx"
)

// In dev mode every event of the init, ca.init included, names the caller
// `ward server --dev` passes and carries its request id; without a caller
// in the context the actor is system:dev, never "unknown".
func TestDevInitEventsNameTheCaller(t *testing.T) {
	for _, tc := range []struct {
		name   string
		caller *reqctx.Caller
		actor  string
	}{
		{"caller in the context", &reqctx.Caller{Actor: "dev:uid=1000", RequestID: "dev-init-1"}, "dev:uid=1000"},
		{"no caller", nil, "system:dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
			srv, _ := start(t, cfg)
			ctx := context.Background()
			if tc.caller != nil {
				ctx = reqctx.With(ctx, *tc.caller)
			}
			if err := srv.DevInit(ctx); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, ev := range allEvents(t, srv) {
				switch ev.Operation {
				case "operator.init", "ca.init", "operator.unseal":
				default:
					continue
				}
				seen[ev.Operation] = true
				if ev.Actor != tc.actor {
					t.Errorf("%s: actor %q, want %q", ev.Operation, ev.Actor, tc.actor)
				}
				if ev.RequestID == "" || (tc.caller != nil && ev.RequestID != tc.caller.RequestID) {
					t.Errorf("%s: request id %q, want the caller's", ev.Operation, ev.RequestID)
				}
			}
			for _, k := range []string{"operator.init", "ca.init", "operator.unseal"} {
				if !seen[k] {
					t.Errorf("no %s event in the audit log", k)
				}
			}
		})
	}
}
