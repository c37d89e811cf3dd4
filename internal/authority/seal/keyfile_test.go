package seal

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

func TestKeyFileSeal(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "seal.key")
	raw := memstore.New()
	b := barrier.New(raw)
	m := NewManager(raw, b, NewKeyFile(path))
	res, err := m.Init(ctx, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Shares) != 0 {
		t.Fatal("key-file seal returned shares")
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".ward-keyfile-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	key, _ := os.ReadFile(path)
	if bytes.Contains(raw.RawBytes(), key) {
		t.Fatal("key file contents stored")
	}
	st, _ := m.Status(ctx)
	wantStatus(t, st, Status{Initialized: true, Sealed: true, Type: TypeKeyFile})
	if _, err := m.SubmitShare(ctx, "00ab"); !errors.Is(err, ErrNotShareSeal) {
		t.Fatalf("SubmitShare on key-file seal = %v", err)
	}
	st, err = m.AutoUnseal(ctx)
	if err != nil || st.Sealed || b.Sealed() {
		t.Fatalf("AutoUnseal = %+v, %v", st, err)
	}
	if _, err := m.AutoUnseal(ctx); !errors.Is(err, ErrAlreadyUnsealed) {
		t.Fatalf("second AutoUnseal = %v", err)
	}
	b.Store().Put(ctx, "a", []byte("b"))

	// Restart: new barrier and manager, same store and file.
	b2 := barrier.New(raw)
	m2 := NewManager(raw, b2, NewKeyFile(path))
	if _, err := m2.AutoUnseal(ctx); err != nil {
		t.Fatal(err)
	}
	if kv, err := b2.Store().Get(ctx, "a"); err != nil || string(kv.Value) != "b" {
		t.Fatalf("after restart Get = %v, %v", kv, err)
	}

	// An existing key file is reused by a second initialisation.
	raw3 := memstore.New()
	m3 := NewManager(raw3, barrier.New(raw3), NewKeyFile(path))
	if _, err := m3.Init(ctx, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, key) {
		t.Fatal("Init replaced an existing key file")
	}
}

func TestKeyFileErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "seal.key")
	raw := memstore.New()
	if _, err := NewManager(raw, barrier.New(raw), NewKeyFile(path)).Init(ctx, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	other := bytes.Clone(good)
	other[0] ^= 1
	for _, tc := range []struct {
		name    string
		prepare func() string // returns the path to use
		msg     string
	}{
		{"missing", func() string { return filepath.Join(dir, "missing.key") }, "does not exist"},
		{"wrong key", func() string { return write(t, dir, "other.key", other, 0o600) }, "not the key file"},
		{"group readable", func() string { return write(t, dir, "open.key", good, 0o640) }, "chmod 600"},
		{"short", func() string { return write(t, dir, "short.key", good[:31], 0o600) }, "exactly 32"},
		{"long", func() string { return write(t, dir, "long.key", append(bytes.Clone(good), '\n'), 0o600) }, "longer than 32"},
		{"directory", func() string { return dir }, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := barrier.New(raw)
			m := NewManager(raw, b, NewKeyFile(tc.prepare()))
			st, err := m.AutoUnseal(ctx)
			if !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("AutoUnseal = %v, want ErrKeyFile mentioning %q", err, tc.msg)
			}
			if !st.Sealed || !b.Sealed() {
				t.Fatal("unsealed despite the error")
			}
		})
	}
	// Init refuses a bad existing key file and writes nothing.
	raw2 := memstore.New()
	bad := write(t, dir, "bad-init.key", good[:10], 0o600)
	if _, err := NewManager(raw2, barrier.New(raw2), NewKeyFile(bad)).Init(ctx, InitOptions{}); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("Init with short key file = %v", err)
	}
	if len(raw2.RawBytes()) != 0 {
		t.Fatal("failed Init wrote to the store")
	}
	// A tampered wrapped blob fails clearly.
	kv, _ := raw.Get(ctx, ConfigKey)
	cfg, _ := ParseConfig(kv.Value)
	cfg.Wrapped[len(cfg.Wrapped)-1] ^= 1
	if _, err := NewKeyFile(path).Unwrap(ctx, cfg); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("Unwrap of altered blob = %v", err)
	}
	cfg.Wrapped = nil
	if _, err := NewKeyFile(path).Unwrap(ctx, cfg); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("Unwrap of empty blob = %v", err)
	}
}

func write(t *testing.T, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}
