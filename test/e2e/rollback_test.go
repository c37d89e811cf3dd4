package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// rawKeyRecords returns the raw (barrier-encrypted) key records in the
// bbolt file, as an attacker copying the data directory would see them.
func rawKeyRecords(t *testing.T, dir string) []store.KV {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(dir, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kvs, err := st.List(context.Background(), "kms/keys/")
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

// TestDestroyedKeyVersionRollback is the red team's attack on the real
// binary: keep an old copy of a key's raw record, destroy a version, copy
// the old bytes back into the bbolt file and restart. The destroyed
// version must stay gone, and the authority must say why.
func TestDestroyedKeyVersionRollback(t *testing.T) {
	dir := t.TempDir()
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	shares := s.InitAndUnseal()
	MustWard(t, s.Addr, "", "key", "create", "tenant-a/payments", "--classification", "internal")
	ct1 := MustWard(t, s.Addr, "card 4111", "kms", "encrypt", "--key", "tenant-a/payments")
	MustWard(t, s.Addr, "", "key", "rotate", "tenant-a/payments")
	s.Stop()
	backup := rawKeyRecords(t, dir) // the old copy (a backup, an etcd snapshot)
	if len(backup) != 1 {
		t.Fatalf("want 1 raw key record, got %d", len(backup))
	}

	s.Start()
	s.Unseal(shares[:3])
	MustWard(t, s.Addr, "", "key", "destroy", "tenant-a/payments", "--version", "1", "--yes")
	if r := Ward(t, s.Addr, ct1, "kms", "decrypt"); r.Code == 0 {
		t.Fatal("v1 decrypted after destroy")
	}
	s.Stop()

	st, err := boltstore.Open(filepath.Join(dir, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), backup[0].Key, backup[0].Value); err != nil {
		t.Fatal(err)
	}
	st.Close()

	s.Start()
	s.Unseal(shares[1:4])
	r := Ward(t, s.Addr, ct1, "kms", "decrypt")
	if r.Code == 0 {
		t.Fatalf("the destroyed version decrypted again after the old record was copied back: %q", r.Stdout)
	}
	for _, want := range []string{"rolled back", "tenant-a/payments", "Restore"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("decrypt error lacks %q: %s", want, r.Stderr)
		}
	}
	r = Ward(t, s.Addr, "", "key", "show", "tenant-a/payments")
	if r.Code == 0 || !strings.Contains(r.Stderr, "rolled back") {
		t.Errorf("key show of a rolled-back record: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	logs := s.Logs.String()
	for _, want := range []string{"key record rolled back", "tenant-a/payments", "resurrected_versions"} {
		if !strings.Contains(logs, want) {
			t.Errorf("server log lacks %q:\n%s", want, logs)
		}
	}
	if m := HTTPGet(t, s, "/metrics"); !strings.Contains(m, "ward_kms_key_record_rollbacks_detected_total 1") {
		t.Errorf("metric not raised:\n%s", GrepLines(m, "rollback"))
	}
	tail := MustWard(t, s.Addr, "", "audit", "tail", "-n", "5")
	if !strings.Contains(tail, "key.rollback_detected") {
		t.Errorf("no key.rollback_detected audit event:\n%s", tail)
	}
}
