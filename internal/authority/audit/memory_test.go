package audit

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

	"github.com/wardproject/ward/internal/shared/checkpoint"
)

func TestCheckpointMemoryNeverMovesBackwards(t *testing.T) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cp := func(size uint64, rootByte byte) checkpoint.Checkpoint {
		c, err := checkpoint.Sign(signer, "ward/test", size, bytes.Repeat([]byte{rootByte}, 32), at.Add(time.Duration(size)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	dir := filepath.Join(t.TempDir(), "state", "checkpoints")
	m, err := OpenCheckpointMemory(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %o, want 700", fi.Mode().Perm())
	}
	keyID := cp(1, 1).KeyID
	if got, err := m.Load(keyID); err != nil || got != nil {
		t.Fatalf("empty memory: %v, %v", got, err)
	}
	if err := m.Remember(cp(10, 10)); err != nil {
		t.Fatal(err)
	}
	p, _ := m.Path(keyID)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %s: %v, mode %v", p, err, fi)
	}
	steps := []struct {
		name     string
		cp       checkpoint.Checkpoint
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
		err := m.Remember(s.cp)
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
		if err := checkpoint.Verify(*got, signer.Public()); err != nil {
			t.Fatalf("%s: remembered checkpoint does not verify: %v", s.name, err)
		}
	}
	// An altered file is an error, not "nothing remembered".
	os.WriteFile(p, []byte("{}"), 0o600)
	if _, err := m.Load(keyID); err == nil {
		t.Fatal("altered memory file loaded")
	}
	if err := m.Remember(cp(30, 30)); err == nil {
		t.Fatal("Remember over an altered file succeeded")
	}
	// A directory others can write to is refused.
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := OpenCheckpointMemory(open); err == nil {
		t.Fatal("world-writable memory dir accepted")
	}
}
