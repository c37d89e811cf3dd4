package checkpoint

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDirMemoryNeverMovesBackwards(t *testing.T) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cp := func(size uint64, rootByte byte) Checkpoint {
		c, err := Sign(signer, "ward/test", size, bytes.Repeat([]byte{rootByte}, 32), at.Add(time.Duration(size)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	dir := filepath.Join(t.TempDir(), "state", "checkpoints")
	m, err := OpenDirMemory(dir)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWitness(m)
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %o, want 700", fi.Mode().Perm())
	}
	keyID := cp(1, 1).KeyID
	if got, err := m.Load(keyID); err != nil || got != nil {
		t.Fatalf("empty memory: %v, %v", got, err)
	}
	if err := w.Remember(cp(10, 10), signer.Public()); err != nil {
		t.Fatal(err)
	}
	p, _ := m.Path(keyID)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %s: %v, mode %v", p, err, fi)
	}
	steps := []struct {
		name     string
		cp       Checkpoint
		rollback bool
		want     uint64 // remembered size afterwards
	}{
		{"same checkpoint again", cp(10, 10), false, 10},
		{"smaller", cp(9, 9), true, 10},
		{"empty log", cp(0, 0), true, 10},
		{"other root at the same size", cp(10, 11), true, 10},
		{"larger", cp(20, 20), false, 20},
		{"back to the old one", cp(10, 10), true, 20},
	}
	for _, s := range steps {
		err := w.Remember(s.cp, signer.Public())
		var rb *RollbackError
		if got := errors.As(err, &rb); got != s.rollback {
			t.Fatalf("%s: Remember error %v, want rollback=%v", s.name, err, s.rollback)
		}
		if rb != nil {
			msg := rb.Error()
			for _, want := range []string{"AUDIT LOG ROLLBACK", p, "ward/test"} {
				if !strings.Contains(msg, want) {
					t.Errorf("%s: message lacks %q: %s", s.name, want, msg)
				}
			}
			if s.cp.Size == rb.Remembered.Size && !strings.Contains(msg, "FORKED") {
				t.Errorf("%s: a fork is not called one: %s", s.name, msg)
			}
		}
		got, err := m.Load(keyID)
		if err != nil || got == nil || got.Size != s.want {
			t.Fatalf("%s: remembered %+v, %v; want size %d", s.name, got, err, s.want)
		}
		if err := Verify(*got, signer.Public()); err != nil {
			t.Fatalf("%s: remembered checkpoint does not verify: %v", s.name, err)
		}
	}
	// An altered file is an error, not "nothing remembered".
	os.WriteFile(p, []byte("{}"), 0o600)
	if _, err := m.Load(keyID); err == nil {
		t.Fatal("altered memory file loaded")
	}
	if err := w.Remember(cp(30, 30), signer.Public()); err == nil {
		t.Fatal("Remember over an altered file succeeded")
	}
	// A directory others can write to is refused.
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := OpenDirMemory(open); err == nil {
		t.Fatal("world-writable memory dir accepted")
	}
}

// TestDirMemoryRemembersTheOriginsKey is the audit-wipe attack on
// the memory: the wiped log comes back under a new signing key with a
// fresh, internally consistent history. Keyed by key id alone, the memory
// would have accepted it as a new log.
func TestDirMemoryRemembersTheOriginsKey(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sign := func(k *ecdsa.PrivateKey, origin string, size uint64) Checkpoint {
		c, err := Sign(k, origin, size, bytes.Repeat([]byte{byte(size)}, 32), at.Add(time.Duration(size)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m, err := OpenDirMemory(filepath.Join(t.TempDir(), "checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	w := NewWitness(m)
	if err := w.Remember(sign(oldKey, "ward/example.org", 50), oldKey.Public()); err != nil {
		t.Fatal(err)
	}
	wiped := sign(newKey, "ward/example.org", 3)
	err = w.CheckKey(wiped)
	var kc *KeyChangedError
	if !errors.As(err, &kc) {
		t.Fatalf("CheckKey of a new key for a known origin: %v", err)
	}
	oldID := sign(oldKey, "x", 1).KeyID
	for _, want := range []string{"AUDIT SIGNING KEY CHANGED", "ward/example.org", oldID, wiped.KeyID, "--accept-new-key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if err := w.Remember(wiped, newKey.Public()); !errors.As(err, &kc) {
		t.Fatalf("Remember of a new key for a known origin: %v", err)
	}
	if got, _ := m.Load(wiped.KeyID); got != nil {
		t.Fatal("Remember stored the checkpoint of the changed key")
	}
	// Another origin under another key is simply a new log.
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := w.Remember(sign(otherKey, "ward/other.org", 3), otherKey.Public()); err != nil {
		t.Fatalf("new origin: %v", err)
	}
	// One key signs one log: the same key under another origin is not a new log.
	var rb *RollbackError
	if err := w.Remember(sign(otherKey, "ward/third.org", 4), otherKey.Public()); !errors.As(err, &rb) || rb.Reason() != "other log" {
		t.Fatalf("a remembered key under another origin: %v", err)
	}
	// The operator accepts the new key (a deliberate re-initialisation).
	if err := w.AcceptKey(wiped); err != nil {
		t.Fatal(err)
	}
	if err := w.Remember(wiped, newKey.Public()); err != nil {
		t.Fatalf("Remember after AcceptKey: %v", err)
	}
	// ... and now the old key is the stranger.
	if err := w.CheckKey(sign(oldKey, "ward/example.org", 60)); !errors.As(err, &kc) || kc.OldKeyID != wiped.KeyID {
		t.Fatalf("old key after accepting the new one: %v", err)
	}

	// Memory written before origins were remembered (checkpoint files
	// only) still knows the origin's key.
	legacy, err := OpenDirMemory(filepath.Join(t.TempDir(), "checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	lw := NewWitness(legacy)
	if err := lw.Remember(sign(oldKey, "ward/example.org", 50), oldKey.Public()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(legacy.originPath("ward/example.org")); err != nil {
		t.Fatal(err)
	}
	if err := lw.CheckKey(wiped); !errors.As(err, &kc) || kc.OldKeyID != oldID {
		t.Fatalf("legacy memory: %v", err)
	}
	if err := lw.CheckKey(sign(oldKey, "ward/example.org", 60)); err != nil {
		t.Fatalf("legacy memory, same key: %v", err)
	}
}
