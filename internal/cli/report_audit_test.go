package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// The report reads the memory of `ward audit verify` like it does: a log
// now signed by another key than the one remembered for its origin is a
// problem of the report (ward audit verify refuses it), not a log that
// verifies because the memory has nothing under the new key.
func TestReportFlagsAChangedAuditKey(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sign := func(k *ecdsa.PrivateKey, size uint64) checkpoint.Checkpoint {
		c, err := checkpoint.Sign(k, "ward/report-test", size, bytes.Repeat([]byte{byte(size)}, 32), at.Add(time.Duration(size)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	state := t.TempDir()
	mem, err := checkpoint.OpenDirMemory(filepath.Join(state, "checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.NewWitness(mem).Remember(sign(oldKey, 10), oldKey.Public()); err != nil {
		t.Fatal(err)
	}
	if rem, problem := rememberedCheckpoint(state, sign(oldKey, 20)); problem != "" || rem == nil || rem.Size != 10 {
		t.Fatalf("same key, larger log: remembered %v, problem %q", rem, problem)
	}
	_, problem := rememberedCheckpoint(state, sign(newKey, 20))
	if !strings.Contains(problem, "AUDIT SIGNING KEY CHANGED") {
		t.Fatalf("a log signed by another key than the remembered one: problem %q", problem)
	}
}
