package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// auditWipeSetup creates a key, encrypts ct1 under version 1, rotates,
// keeps the raw key record (the attacker's old copy), then destroys
// version 1 and lets `ward audit verify` remember a checkpoint in state.
func auditWipeSetup(t *testing.T, s *server, dir, state string) (shares []string, ct1 string, backup store.KV) {
	t.Helper()
	shares = s.initAndUnseal()
	mustWard(t, s.addr, "", "key", "create", "tenant-a/payments", "--classification", "internal")
	ct1 = mustWard(t, s.addr, "card 4111", "kms", "encrypt", "--key", "tenant-a/payments")
	mustWard(t, s.addr, "", "key", "rotate", "tenant-a/payments")
	s.stop()
	recs := rawKeyRecords(t, dir)
	if len(recs) != 1 {
		t.Fatalf("want 1 raw key record, got %d", len(recs))
	}
	s.start()
	s.unseal(shares[:3])
	mustWard(t, s.addr, "", "key", "destroy", "tenant-a/payments", "--version", "1", "--yes")
	if r := ward(t, s.addr, ct1, "kms", "decrypt"); r.code == 0 {
		t.Fatal("v1 decrypted after destroy")
	}
	if out := mustWard(t, s.addr, "", "audit", "verify", "--state-dir", state); !strings.Contains(out, "remembered this checkpoint") {
		t.Fatalf("verify did not remember its checkpoint:\n%s", out)
	}
	s.stop()
	return shares, ct1, recs[0]
}

// tamper edits the raw bbolt file, bypassing the barrier: it deletes every
// key under each of the prefixes, then writes puts.
func tamper(t *testing.T, dir string, deletePrefixes []string, puts ...store.KV) {
	t.Helper()
	ctx := context.Background()
	st, err := boltstore.Open(filepath.Join(dir, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, p := range deletePrefixes {
		kvs, err := st.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			if strings.HasPrefix(kv.Key, "core/") {
				continue // the keyring and seal configuration
			}
			if err := st.Delete(ctx, kv.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, kv := range puts {
		if _, err := st.Put(ctx, kv.Key, kv.Value); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAuditWipeDoesNotBringBackADestroyedVersion is the red team's attack:
// put the old key record back and delete every audit/ key. The old server
// made a new audit signing key and an empty log at unseal, so the record
// passed the audit check, the destroyed version decrypted and
// `ward audit verify` (memory keyed by signing key) passed. Now the unseal
// fails, naming what is missing and what to do.
func TestAuditWipeDoesNotBringBackADestroyedVersion(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	s := startServer(t, dir, writeConfig(t, dir, ""))
	shares, ct1, backup := auditWipeSetup(t, s, dir, state)

	tamper(t, dir, []string{"audit/"}, backup)

	s.start()
	for _, sh := range shares[1:3] {
		mustWard(t, s.addr, sh+"\n", "operator", "unseal")
	}
	r := ward(t, s.addr, shares[3]+"\n", "operator", "unseal")
	if r.code == 0 {
		if d := ward(t, s.addr, ct1, "kms", "decrypt"); d.code == 0 {
			t.Fatalf("the destroyed version decrypted again after audit/ was wiped: %q", d.stdout)
		}
		t.Fatalf("unseal succeeded with audit/ wiped from storage:\n%s", r.stdout)
	}
	for _, want := range []string{"audit/signing-key", "deleted or rolled back", "Restore the whole storage", "stays sealed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("unseal error lacks %q:\n%s", want, r.stderr)
		}
	}
	if d := ward(t, s.addr, ct1, "kms", "decrypt"); d.code == 0 || !strings.Contains(d.stderr, "sealed") {
		t.Fatalf("decrypt after the refused unseal: exit %d\n%s%s", d.code, d.stdout, d.stderr)
	}
	if logs := s.logs.String(); !strings.Contains(logs, "unseal refused") || !strings.Contains(logs, "audit/signing-key") {
		t.Errorf("server log does not report the refused unseal:\n%s", logs)
	}
	// It keeps failing: nothing was created at the failed unseal.
	for _, sh := range shares[:2] {
		mustWard(t, s.addr, sh+"\n", "operator", "unseal")
	}
	if r := ward(t, s.addr, shares[4]+"\n", "operator", "unseal"); r.code == 0 {
		t.Fatal("the second unseal with audit/ wiped succeeded")
	}
}

// TestAuditWipeOfEverythingIsCaught is the attack pushed further: wipe all
// the authority's data (so it looks fresh and makes a new audit log under
// a new key), unseal once, then put the old key record back. The record's
// revision is unknown to the new log, so it is refused, and
// `ward audit verify` with its saved state sees the signing key change.
func TestAuditWipeOfEverythingIsCaught(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	s := startServer(t, dir, writeConfig(t, dir, ""))
	shares, ct1, backup := auditWipeSetup(t, s, dir, state)

	tamper(t, dir, []string{""})
	s.start()
	s.unseal(shares[1:4])
	s.stop()
	tamper(t, dir, nil, backup)

	s.start()
	s.unseal(shares[2:5])
	d := ward(t, s.addr, ct1, "kms", "decrypt")
	if d.code == 0 {
		t.Fatalf("the destroyed version decrypted again after storage was wiped and the record put back: %q", d.stdout)
	}
	for _, want := range []string{"tenant-a/payments", "no event", "Restore"} {
		if !strings.Contains(d.stderr, want) {
			t.Errorf("decrypt error lacks %q:\n%s", want, d.stderr)
		}
	}
	r := ward(t, s.addr, "", "audit", "verify", "--state-dir", state)
	if r.code == 0 {
		t.Fatalf("verify with saved state passed on a log under a new signing key:\n%s", r.stdout)
	}
	all := r.stdout + r.stderr
	for _, want := range []string{"AUDIT SIGNING KEY CHANGED", "ward/", "--accept-new-key"} {
		if !strings.Contains(all, want) {
			t.Errorf("verify output lacks %q:\n%s", want, all)
		}
	}
	// It keeps failing until the operator accepts the key.
	if r := ward(t, s.addr, "", "audit", "verify", "--state-dir", state); r.code == 0 {
		t.Fatal("second verify passed")
	}
	out := mustWard(t, s.addr, "", "audit", "verify", "--state-dir", state, "--accept-new-key")
	if !strings.Contains(out, "WARNING") || !strings.Contains(out, "remembered key") {
		t.Errorf("--accept-new-key output:\n%s", out)
	}
	mustWard(t, s.addr, "", "audit", "verify", "--state-dir", state)
}
