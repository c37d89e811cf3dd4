package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// TestAuditTruncationWithOldHeadIsCaught is the red team's attack: truncate
// the audit tail in the raw bbolt file and put an old head back. The log is
// internally consistent again, so only memory catches it: `ward audit
// verify` must fail loudly because it remembers a newer checkpoint.
func TestAuditTruncationWithOldHeadIsCaught(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	shares := s.InitAndUnseal()
	MustWard(t, s.Addr, "", "key", "create", "k", "--classification", "internal")
	out := MustWard(t, s.Addr, "", "audit", "verify", "--state-dir", state)
	if !strings.Contains(out, "remembered this checkpoint") {
		t.Fatalf("first verify did not remember its checkpoint:\n%s", out)
	}
	s.Stop()

	ctx := context.Background()
	path := filepath.Join(dir, "ward.db")
	st, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	oldHead, err := st.Get(ctx, "audit/head") // the attacker's old copy
	if err != nil {
		t.Fatal(err)
	}
	st.Close()

	s.Start()
	s.Unseal(shares[:3])
	for i := 0; i < 20; i++ {
		MustWard(t, s.Addr, fmt.Sprint(i), "kms", "encrypt", "--key", "k")
	}
	out = MustWard(t, s.Addr, "", "audit", "verify", "--state-dir", state)
	if !strings.Contains(out, "consistent with the checkpoint of") {
		t.Fatalf("second verify did not prove consistency with the remembered checkpoint:\n%s", out)
	}
	var remembered int
	if _, err := fmt.Sscanf(out, "OK: %d events", &remembered); err != nil {
		t.Fatalf("no size in verify output: %v\n%s", err, out)
	}
	s.Stop()

	// Truncate the tail and restore the old head, bypassing the barrier.
	st, err = boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	events, err := st.List(ctx, "audit/e/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range events {
		if kv.Revision > oldHead.Revision {
			if err := st.Delete(ctx, kv.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := st.Put(ctx, "audit/head", oldHead.Value); err != nil {
		t.Fatal(err)
	}
	st.Close()

	s.Start()
	s.Unseal(shares[1:4])
	// Without memory (the old behaviour) the rolled-back log verifies.
	if r := Ward(t, s.Addr, "", "audit", "verify", "--state-dir", filepath.Join(t.TempDir(), "fresh")); r.Code != 0 {
		t.Fatalf("precondition: the rolled-back log should verify without memory: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r := Ward(t, s.Addr, "", "audit", "verify", "--state-dir", state)
	if r.Code == 0 {
		t.Fatalf("verify passed on a truncated log with an old head:\n%s", r.Stdout)
	}
	all := r.Stdout + r.Stderr
	for _, want := range []string{"AUDIT LOG ROLLBACK", "went BACKWARDS", fmt.Sprintf("but %d events with root", remembered)} {
		if !strings.Contains(all, want) {
			t.Errorf("verify output lacks %q:\n%s", want, all)
		}
	}
	// And it keeps failing: the memory did not move back.
	if r := Ward(t, s.Addr, "", "audit", "verify", "--state-dir", state); r.Code == 0 {
		t.Fatalf("second verify after the rollback passed:\n%s", r.Stdout)
	}
}
