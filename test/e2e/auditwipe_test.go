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
func auditWipeSetup(t *testing.T, s *Server, dir, state string) (shares []string, ct1 string, backup store.KV) {
	t.Helper()
	shares = s.InitAndUnseal()
	MustWard(t, s.Addr, "", "key", "create", "tenant-a/payments", "--classification", "internal")
	ct1 = MustWard(t, s.Addr, "card 4111", "kms", "encrypt", "--key", "tenant-a/payments")
	MustWard(t, s.Addr, "", "key", "rotate", "tenant-a/payments")
	s.Stop()
	recs := rawKeyRecords(t, dir)
	if len(recs) != 1 {
		t.Fatalf("want 1 raw key record, got %d", len(recs))
	}
	s.Start()
	s.Unseal(shares[:3])
	MustWard(t, s.Addr, "", "key", "destroy", "tenant-a/payments", "--version", "1", "--yes")
	if r := Ward(t, s.Addr, ct1, "kms", "decrypt"); r.Code == 0 {
		t.Fatal("v1 decrypted after destroy")
	}
	if out := MustWard(t, s.Addr, "", "audit", "verify", "--state-dir", state); !strings.Contains(out, "remembered this checkpoint") {
		t.Fatalf("verify did not remember its checkpoint:\n%s", out)
	}
	s.Stop()
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
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	shares, ct1, backup := auditWipeSetup(t, s, dir, state)

	tamper(t, dir, []string{"audit/"}, backup)

	s.Start()
	for _, sh := range shares[1:3] {
		MustWard(t, s.Addr, sh+"\n", "operator", "unseal")
	}
	r := Ward(t, s.Addr, shares[3]+"\n", "operator", "unseal")
	if r.Code == 0 {
		if d := Ward(t, s.Addr, ct1, "kms", "decrypt"); d.Code == 0 {
			t.Fatalf("the destroyed version decrypted again after audit/ was wiped: %q", d.Stdout)
		}
		t.Fatalf("unseal succeeded with audit/ wiped from storage:\n%s", r.Stdout)
	}
	for _, want := range []string{"audit/signing-key", "deleted or rolled back", "Restore the whole storage", "stays sealed"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("unseal error lacks %q:\n%s", want, r.Stderr)
		}
	}
	if d := Ward(t, s.Addr, ct1, "kms", "decrypt"); d.Code == 0 || !strings.Contains(d.Stderr, "sealed") {
		t.Fatalf("decrypt after the refused unseal: exit %d\n%s%s", d.Code, d.Stdout, d.Stderr)
	}
	if logs := s.Logs.String(); !strings.Contains(logs, "unseal refused") || !strings.Contains(logs, "audit/signing-key") {
		t.Errorf("server log does not report the refused unseal:\n%s", logs)
	}
	// It keeps failing: nothing was created at the failed unseal.
	for _, sh := range shares[:2] {
		MustWard(t, s.Addr, sh+"\n", "operator", "unseal")
	}
	if r := Ward(t, s.Addr, shares[4]+"\n", "operator", "unseal"); r.Code == 0 {
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
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	shares, ct1, backup := auditWipeSetup(t, s, dir, state)

	tamper(t, dir, []string{""})
	s.Start()
	s.Unseal(shares[1:4])
	s.Stop()
	tamper(t, dir, nil, backup)

	s.Start()
	s.Unseal(shares[2:5])
	d := Ward(t, s.Addr, ct1, "kms", "decrypt")
	if d.Code == 0 {
		t.Fatalf("the destroyed version decrypted again after storage was wiped and the record put back: %q", d.Stdout)
	}
	for _, want := range []string{"tenant-a/payments", "no event", "Restore"} {
		if !strings.Contains(d.Stderr, want) {
			t.Errorf("decrypt error lacks %q:\n%s", want, d.Stderr)
		}
	}
	r := Ward(t, s.Addr, "", "audit", "verify", "--state-dir", state)
	if r.Code == 0 {
		t.Fatalf("verify with saved state passed on a log under a new signing key:\n%s", r.Stdout)
	}
	all := r.Stdout + r.Stderr
	for _, want := range []string{"AUDIT SIGNING KEY CHANGED", "ward/", "--accept-new-key"} {
		if !strings.Contains(all, want) {
			t.Errorf("verify output lacks %q:\n%s", want, all)
		}
	}
	// It keeps failing until the operator accepts the key.
	if r := Ward(t, s.Addr, "", "audit", "verify", "--state-dir", state); r.Code == 0 {
		t.Fatal("second verify passed")
	}
	out := MustWard(t, s.Addr, "", "audit", "verify", "--state-dir", state, "--accept-new-key")
	if !strings.Contains(out, "WARNING") || !strings.Contains(out, "remembered key") {
		t.Errorf("--accept-new-key output:\n%s", out)
	}
	MustWard(t, s.Addr, "", "audit", "verify", "--state-dir", state)
}
