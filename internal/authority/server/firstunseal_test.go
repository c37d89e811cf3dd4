package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/store"
)

// flakyStore fails batches that write the audit head while failHead > 0
// (an etcd leader change, a full disk).
type flakyStore struct {
	store.Store
	failHead atomic.Int32
}

func (f *flakyStore) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	for _, op := range ops {
		if strings.HasSuffix(op.Key, "audit/head") && f.failHead.Load() > 0 {
			f.failHead.Add(-1)
			return 0, errors.New("injected: etcd leader change")
		}
	}
	return f.Store.Batch(ctx, ops)
}

func restartStart(t *testing.T, cfg *config.Server, raw store.Store) (*Server, *client.Client) {
	sl, err := OpenSeal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func restartNew(t *testing.T, cfg *config.Server, raw store.Store) (*Server, error) {
	sl, err := OpenSeal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return srv, srv.Start(context.Background())
}

// TestFirstUnsealStorageHiccupDoesNotLookLikeAWipe: a fresh authority whose
// storage fails while its first unseal writes the audit log (found by a
// red-team run) must unseal once storage is healthy, not be refused as if
// an attacker had wiped its audit log.
func TestFirstUnsealStorageHiccupDoesNotLookLikeAWipe(t *testing.T) {
	root := t.TempDir()
	cfg := baseConfig(filepath.Join(root, "a"))
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(cfg.DataDir, 0o700)
	ctx := context.Background()
	inner, err := OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	raw := &flakyStore{Store: inner}
	a, ca := restartStart(t, cfg, raw)
	raw.failHead.Store(100) // storage hiccup during init's unseal
	_, err = ca.Operator.Init(ctx, &wardv1.InitRequest{})
	t.Logf("init: %v", err)
	ca.Close()
	a.Stop()
	// restart while storage is still flaky: pending (the init event) is gone
	b, err := restartNew(t, cfg, raw)
	t.Logf("restart 1 (storage flaky): %v", err)
	b.Stop()
	raw.failHead.Store(0)
	kvs, _ := inner.List(ctx, "")
	for _, kv := range kvs {
		t.Logf("stored after the hiccup: %s", kv.Key)
	}
	c, err := restartNew(t, cfg, raw)
	defer c.Stop()
	if err != nil {
		t.Fatalf("restart on healthy storage: %v (a fresh authority must not stay sealed after a storage hiccup)", err)
	}
}
