package server

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
)

// TestSealedEventsSurviveARestart: init and a rejected share happen while
// sealed; the process then goes away without ever unsealing (Stop keeps
// nothing either: memory is gone). A new process over the same storage
// appends both events at its unseal, marked journal=sealed, and empties
// the journal.
func TestSealedEventsSurviveARestart(t *testing.T) {
	ctx := context.Background()
	cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
	cfg.Seal.Type, cfg.Seal.KeyFile = "shamir", ""
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(cfg.DataDir, 0o700)
	raw, err := OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	a, ca := restartStart(t, cfg, raw)
	r, err := ca.Operator.Init(ctx, &wardv1.InitRequest{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	bogus := "00" + r.Shares[0][2:]
	if bogus == r.Shares[0] { // its first byte was 00 already (1 in 256)
		bogus = "ff" + r.Shares[0][2:]
	}
	if _, err := ca.Operator.Unseal(ctx, &wardv1.UnsealRequest{Share: bogus}); err == nil {
		t.Fatal("a bogus share was accepted")
	}
	ca.Close()
	a.Stop()
	kvs, _ := raw.List(ctx, sealedJournalPrefix)
	if len(kvs) != 2 {
		t.Fatalf("journal holds %d events, want 2 (init, rejected share)", len(kvs))
	}
	for _, kv := range kvs {
		if strings.Contains(string(kv.Value), r.Shares[0][2:]) {
			t.Fatal("the journal holds a share")
		}
	}

	b, cb := restartStart(t, cfg, raw)
	defer func() { cb.Close(); b.Stop() }()
	for _, s := range r.Shares[1:] {
		if _, err := cb.Operator.Unseal(ctx, &wardv1.UnsealRequest{Share: s}); err != nil {
			t.Fatal(err)
		}
	}
	evs := tailEvents(t, cb)
	found := map[string]bool{}
	for _, ev := range evs {
		if ev.Fields["journal"] == "sealed" {
			found[ev.Operation+" "+ev.Result] = true
		}
	}
	if !found["operator.init ok"] || !found["operator.unseal error"] {
		t.Fatalf("events from before the restart: %v (all: %+v)", found, evs)
	}
	if kvs, _ := raw.List(ctx, sealedJournalPrefix); len(kvs) != 0 {
		t.Fatalf("the journal still holds %d events after the unseal", len(kvs))
	}
}

func tailEvents(t *testing.T, c *client.Client) []audit.Event {
	t.Helper()
	st, err := c.Audit.Tail(context.Background(), &wardv1.TailAuditRequest{Last: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	for {
		rec, err := st.Recv()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var ev audit.Event
		if err := json.Unmarshal(rec.Leaf, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}
