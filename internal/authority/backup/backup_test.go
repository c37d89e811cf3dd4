package backup

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// authority is the storage side of an unsealed authority: a raw store
// with a keyring, a seal configuration, barrier values and an audit log.
type authority struct {
	raw    store.Store
	b      *barrier.Barrier
	m      *seal.Manager
	signer *ecdsa.PrivateKey
	shares []string
	log    *audit.Log
}

func newAuthority(t testing.TB, raw store.Store, values int) *authority {
	t.Helper()
	ctx := context.Background()
	b := barrier.New(raw)
	m := seal.NewManager(raw, b, seal.NewShamir())
	res, err := m.Init(ctx, seal.InitOptions{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	a := &authority{raw: raw, b: b, m: m, shares: res.Encoded()}
	for _, s := range a.shares[:2] {
		if _, err := m.SubmitShare(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	a.signer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bs := b.Store()
	a.log, err = audit.Open(ctx, bs, a.signer, "ward/backup.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.log.Close() })
	for i := range values {
		if _, err := bs.Put(ctx, fmt.Sprintf("kms/keys/%05d", i), []byte(fmt.Sprintf("secret-value-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, err := a.log.Append(ctx, audit.Event{Operation: "test.event", Result: "ok", Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func (a *authority) backup(t testing.TB) ([]byte, Manifest) {
	t.Helper()
	data, m, err := Create(context.Background(), Source{Raw: a.raw, Open: a.b.OpenRaw, Signer: a.signer, TrustDomain: "backup.test", WardVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return data, m
}

func TestCreateVerifyRestore(t *testing.T) {
	ctx := context.Background()
	a := newAuthority(t, memstore.New(), 50)
	// HA election state (plaintext, lease-bound in etcd) is not data.
	if _, err := a.raw.Put(ctx, "ha/leader/694d9a3b", []byte("member-a")); err != nil {
		t.Fatal(err)
	}
	data, m := a.backup(t)
	if m.Entries < 50+5+2 || m.Audit.Checkpoint.Size != 5 || m.Audit.Entries != 5 || m.Seal.Threshold != 2 {
		t.Fatalf("manifest: %+v", m)
	}
	if bytes.Contains(data, []byte("secret-value-")) {
		t.Fatal("the backup holds a plaintext value")
	}
	v, err := Verify(bytes.NewReader(data), VerifyOptions{TrustedKey: a.signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if v.Manifest.PayloadSHA256 != m.PayloadSHA256 {
		t.Fatal("manifest differs")
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := Verify(bytes.NewReader(data), VerifyOptions{TrustedKey: other.Public()}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not by the trusted audit key") {
		t.Fatalf("another authority's key: %v", err)
	}

	// Restore into an empty store, unseal with the original shares.
	dst := memstore.New()
	if _, err := Restore(ctx, bytes.NewReader(data), dst, RestoreOptions{MaxBatchBytes: 200}); err != nil {
		t.Fatal(err)
	}
	b2 := barrier.New(dst)
	m2 := seal.NewManager(dst, b2, seal.NewShamir())
	for _, s := range a.shares[1:] {
		if _, err := m2.SubmitShare(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if kvs, _ := dst.List(ctx, "ha/"); len(kvs) != 0 {
		t.Fatalf("HA election state was backed up and restored: %v", kvs[0].Key)
	}
	kv, err := b2.Store().Get(ctx, "kms/keys/00042")
	if err != nil || string(kv.Value) != "secret-value-42" {
		t.Fatalf("restored value: %q %v", kv.Value, err)
	}
	log2, err := audit.Open(ctx, b2.Store(), a.signer, "ward/backup.test")
	if err != nil {
		t.Fatal(err)
	}
	defer log2.Close()
	if log2.Size() != 5 {
		t.Fatalf("restored audit log has %d events", log2.Size())
	}

	// A non-empty target is refused and left as it was.
	before, _ := dst.List(ctx, "")
	if _, err := Restore(ctx, bytes.NewReader(data), dst, RestoreOptions{}); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("restore into a non-empty store: %v", err)
	}
	after, _ := dst.List(ctx, "")
	if len(before) != len(after) {
		t.Fatal("a refused restore changed the target")
	}
}

// TestEveryAlteredByteIsRefused flips one byte in every region of the
// file (and, for small files, at every offset): each is refused with a
// reason, and nothing is handed to the restore callback's store.
func TestEveryAlteredByteIsRefused(t *testing.T) {
	a := newAuthority(t, memstore.New(), 3)
	data, m := a.backup(t)
	mlen := int(data[len(Magic)])<<24 | int(data[len(Magic)+1])<<16 | int(data[len(Magic)+2])<<8 | int(data[len(Magic)+3])
	sigStart := len(Magic) + 4 + mlen
	payloadStart := len(data) - int(m.PayloadSize)
	regions := map[string]int{
		"magic": 0, "manifest length": len(Magic) + 2, "manifest": len(Magic) + 4 + mlen/2,
		"signature length": sigStart + 1, "signature": sigStart + 10, "payload key length": payloadStart + 1,
		"payload value": payloadStart + 40, "audit leaf hashes": len(data) - 5, "last byte": len(data) - 1,
	}
	for name, off := range regions {
		bad := bytes.Clone(data)
		bad[off] ^= 0x01
		_, err := Verify(bytes.NewReader(bad), VerifyOptions{})
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s (offset %d) altered: %v", name, off, err)
			continue
		}
		t.Logf("%s altered: %v", name, err)
	}
	for off := range data {
		bad := bytes.Clone(data)
		bad[off] ^= 0x80
		if _, err := Verify(bytes.NewReader(bad), VerifyOptions{}); !errors.Is(err, ErrRefused) {
			t.Fatalf("byte %d of %d altered, not refused: %v", off, len(data), err)
		}
	}
	if _, err := Verify(bytes.NewReader(data[:len(data)-1]), VerifyOptions{}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated: %v", err)
	}
	if _, err := Verify(bytes.NewReader(append(bytes.Clone(data), 0)), VerifyOptions{}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "follows") {
		t.Errorf("appended byte: %v", err)
	}
	// An altered byte never reaches the restore target.
	bad := bytes.Clone(data)
	bad[len(data)-40] ^= 1
	dst := memstore.New()
	if _, err := Restore(context.Background(), bytes.NewReader(bad), dst, RestoreOptions{}); !errors.Is(err, ErrRefused) {
		t.Fatalf("restore of an altered backup: %v", err)
	}
	if kvs, _ := dst.List(context.Background(), ""); len(kvs) != 0 {
		t.Fatalf("a refused restore wrote %d entries", len(kvs))
	}
}

func FuzzVerify(f *testing.F) {
	a := newAuthority(f, memstore.New(), 2)
	data, _ := a.backup(f)
	f.Add(data)
	f.Add(data[:len(Magic)+10])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		Verify(bytes.NewReader(b), VerifyOptions{})
	})
}

// FuzzPayload feeds arbitrary payloads behind a genuine signed manifest:
// the payload is parsed while it is hashed, before the hash is known.
func FuzzPayload(f *testing.F) {
	a := newAuthority(f, memstore.New(), 2)
	data, m := a.backup(f)
	header := data[:len(data)-int(m.PayloadSize)]
	f.Add(data[len(header):])
	f.Add([]byte{0, 1, 'a', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		file := append(bytes.Clone(header), payload...)
		if _, err := Verify(bytes.NewReader(file), VerifyOptions{}); err == nil && !bytes.Equal(payload, data[len(header):]) {
			t.Fatal("a different payload verified")
		}
	})
}

// TestRestoreRecord: a complete restore leaves a restore record beside
// the keyring for the restored authority to apply and audit at its first
// unseal: by default the federation lint is kept at the stricter mode,
// with KeepBackupLintMode the backup's stands. A record the backup itself
// holds (not yet consumed when it was taken) is replaced by the new one.
// An unreadable record reads as the stricter choice.
func TestRestoreRecord(t *testing.T) {
	ctx := context.Background()
	a := newAuthority(t, memstore.New(), 3)
	if _, err := a.raw.Put(ctx, RecordKey, []byte(`{"policy_lint":"backup","trust_domain":"old"}`)); err != nil {
		t.Fatal(err)
	}
	data, m := a.backup(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, keep := range []bool{false, true} {
		dst := memstore.New()
		if _, err := Restore(ctx, bytes.NewReader(data), dst, RestoreOptions{KeepBackupLintMode: keep, Now: func() time.Time { return at }}); err != nil {
			t.Fatal(err)
		}
		kv, err := dst.Get(ctx, RecordKey)
		if err != nil {
			t.Fatal(err)
		}
		rec, ok := ParseRecord(kv.Value)
		want := LintStricter
		if keep {
			want = LintFromBackup
		}
		if !ok || rec.PolicyLint != want || !rec.Restored.Equal(at) || rec.TrustDomain != "backup.test" || rec.PayloadSHA256 != m.PayloadSHA256 ||
			!rec.BackupCreated.Equal(m.Created) || rec.KeyID != m.KeyID {
			t.Fatalf("keep=%t: record %+v", keep, rec)
		}
	}
	for _, b := range []string{"", "{", `{"policy_lint":"warn"}`, `{"policy_lint":"backup"`} {
		if rec, ok := ParseRecord([]byte(b)); ok || rec.PolicyLint != LintStricter {
			t.Fatalf("unreadable record %q read as %+v", b, rec)
		}
	}
}

// FuzzParseRecord: a restore record is read from storage (writable by
// whoever holds the disk): any bytes give either a readable record with a
// known choice or the stricter one, never a panic.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"policy_lint":"backup","restored":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"policy_lint":"stricter"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := ParseRecord(b)
		if r.PolicyLint != LintStricter && r.PolicyLint != LintFromBackup {
			t.Fatalf("%q read as %+v", b, r)
		}
		if !ok && r.PolicyLint != LintStricter {
			t.Fatalf("unreadable %q read as %+v", b, r)
		}
	})
}
