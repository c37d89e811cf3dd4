package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// indexWitness is the production wiring (server.auditWitness) in miniature.
type indexWitness struct{ idx *audit.RevisionIndex }

func (w indexWitness) Latest(ctx context.Context, name string) (Mark, bool, error) {
	m, ok, err := w.idx.Latest(ctx, name)
	return Mark{Revision: m.Revision, Digest: m.Digest, Seq: m.Seq, Destroyed: m.Destroyed}, ok, err
}

// Synced is server.auditWitness's: a listing checks its records against
// one reading of the log (so TestDestroyedVersionRollbackIsRefused's
// `ward key list` runs the attack through it).
func (w indexWitness) Synced(ctx context.Context) (Witness, error) {
	lookup, err := w.idx.Synced(ctx)
	if err != nil {
		return nil, err
	}
	return syncedIndex(lookup), nil
}

type syncedIndex func(key string) (audit.Mark, bool)

func (w syncedIndex) Latest(_ context.Context, name string) (Mark, bool, error) {
	m, ok := w(name)
	return Mark{Revision: m.Revision, Digest: m.Digest, Seq: m.Seq, Destroyed: m.Destroyed}, ok, nil
}

// countingWitness counts how a listing asks: per key (Latest) or once
// (Synced).
type countingWitness struct {
	indexWitness
	latest, synced *int
}

func (w countingWitness) Latest(ctx context.Context, name string) (Mark, bool, error) {
	*w.latest++
	return w.indexWitness.Latest(ctx, name)
}

func (w countingWitness) Synced(ctx context.Context) (Witness, error) {
	*w.synced++
	return w.indexWitness.Synced(ctx)
}

// TestListReadsTheAuditLogOnce: listing keys checks every record against
// one reading of the audit log, not one per key, and still checks each
// (all found, with their revisions).
func TestListReadsTheAuditLogOnce(t *testing.T) {
	ctx := context.Background()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := openAuthority(t, filepath.Join(t.TempDir(), "ward.db"), signer, true)
	defer a.close()
	var latest, synced int
	a.m.witness = countingWitness{indexWitness{audit.NewRevisionIndex(a.log)}, &latest, &synced}
	for _, k := range []string{"a", "b", "c"} {
		if _, err := a.m.Create(ctx, k, "internal", ""); err != nil {
			t.Fatal(err)
		}
	}
	latest = 0
	vs, err := a.m.List(ctx, "")
	if err != nil || len(vs) != 3 {
		t.Fatalf("list: %v %v", vs, err)
	}
	if latest != 0 || synced != 1 {
		t.Fatalf("a listing of 3 keys asked the witness %d times per key and synced %d times", latest, synced)
	}
}

// authority is an authority's storage stack on a real bbolt file: raw
// store, barrier, audit log and KMS, as the server wires them.
type authority struct {
	raw  *boltstore.Store
	log  *audit.Log
	m    *Manager
	logs *syncbuf.Buffer
}

var (
	testRootKey = bytes.Repeat([]byte{3}, barrier.KeySize)
	testPathKey = bytes.Repeat([]byte{7}, 32)
)

func openAuthority(t *testing.T, path string, signer *ecdsa.PrivateKey, witness bool) *authority {
	t.Helper()
	ctx := context.Background()
	raw, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b := barrier.New(raw)
	if ok, _ := b.Initialized(ctx); !ok {
		if err := b.Initialize(ctx, testRootKey); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Unseal(ctx, testRootKey); err != nil {
		t.Fatal(err)
	}
	bs := b.Store()
	l, err := audit.Open(ctx, bs, signer, "ward/test")
	if err != nil {
		t.Fatal(err)
	}
	a := &authority{raw: raw, log: l, logs: &syncbuf.Buffer{}}
	opts := []Option{WithLogger(slog.New(slog.NewTextHandler(a.logs, nil)))}
	if witness {
		opts = append(opts, WithWitness(indexWitness{audit.NewRevisionIndex(l)}))
	}
	hasher, err := audit.NewHasher(testPathKey)
	if err != nil {
		t.Fatal(err)
	}
	if a.m, err = New(bs, testPathKey, DefaultTable(), audit.NewLogRecorder(l, hasher), opts...); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *authority) close() {
	a.log.Close()
	a.raw.Close()
}

func (a *authority) events(t *testing.T, op string) []audit.Event {
	t.Helper()
	var out []audit.Event
	err := a.log.Read(context.Background(), 0, a.log.Size(), func(r audit.Record) error {
		if ev, err := audit.DecodeEvent(r.Leaf); err == nil && ev.Operation == op {
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDestroyedVersionRollbackIsRefused runs the red team's attack: copy an
// older raw record of a key (taken before `key destroy`) back into the
// bbolt file, bypassing the barrier API, and restart. The destroyed
// version must not decrypt again, and the rollback must be reported.
func TestDestroyedVersionRollbackIsRefused(t *testing.T) {
	ctx := context.Background()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ward.db")
	a := openAuthority(t, path, signer, true)
	if _, err := a.m.Create(ctx, "tenant/k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	ct1, _, err := a.m.Encrypt(ctx, "tenant/k", []byte("secret under v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.Rotate(ctx, "tenant/k"); err != nil {
		t.Fatal(err)
	}
	recPath := a.m.path("tenant/k")
	old, err := a.raw.Get(ctx, recPath) // the attacker's backup: raw, encrypted bytes
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.Destroy(ctx, "tenant/k", 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.m.Decrypt(ctx, ct1, nil); errs.KindOf(err) != errs.Precondition {
		t.Fatalf("decrypt after destroy: %v", err)
	}
	a.close()

	// The attacker copies the old bytes back, straight into bbolt.
	raw, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, recPath, old.Value); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	// Without the audit witness (the old code) the attack works: this is
	// what the red team saw.
	b := openAuthority(t, path, signer, false)
	if pt, _, err := b.m.Decrypt(ctx, ct1, nil); err != nil || string(pt) != "secret under v1" {
		t.Fatalf("precondition: without the witness the rolled-back record should decrypt (got %q, %v)", pt, err)
	}
	b.close()

	// The restarted authority refuses the record.
	c := openAuthority(t, path, signer, true)
	defer c.close()
	_, _, err = c.m.Decrypt(ctx, ct1, nil)
	kind(t, err, errs.RolledBack)
	for _, want := range []string{`"tenant/k"`, "rolled back", "versions 1", "Restore"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("decrypt error lacks %q: %v", want, err)
		}
	}
	if _, err := c.m.Get(ctx, "tenant/k"); errs.KindOf(err) != errs.RolledBack { // `ward key show`
		t.Fatalf("Get of rolled-back key: %v", err)
	}
	if _, err := c.m.List(ctx, ""); errs.KindOf(err) != errs.RolledBack { // `ward key list`
		t.Fatalf("List with a rolled-back key: %v", err)
	}
	if _, _, err := c.m.Encrypt(ctx, "tenant/k", []byte("x"), nil); errs.KindOf(err) != errs.RolledBack {
		t.Fatalf("Encrypt with rolled-back key: %v", err)
	}
	if _, err := c.m.Rotate(ctx, "tenant/k"); errs.KindOf(err) != errs.RolledBack {
		t.Fatalf("Rotate of rolled-back key: %v", err)
	}
	if n := c.m.RollbacksDetected(); n != 1 {
		t.Errorf("RollbacksDetected = %d, want 1 (reported once)", n)
	}
	logs := c.logs.String()
	for _, want := range []string{"level=ERROR", "rolled back", "key=tenant/k", "stored_revision=2", "audit_revision=3", "resurrected_versions=1"} {
		if !strings.Contains(logs, want) {
			t.Errorf("error log lacks %q:\n%s", want, logs)
		}
	}
	evs := c.events(t, "key.rollback_detected")
	if len(evs) != 1 || evs[0].Key != "tenant/k" || evs[0].Result != audit.ResultError || evs[0].Fields["resurrected_versions"] != "1" {
		t.Fatalf("rollback audit events: %+v", evs)
	}
	// Background jobs skip the bad key instead of failing for all keys.
	if _, err := c.m.RotateDue(ctx); err != nil {
		t.Fatalf("RotateDue with a rolled-back key: %v", err)
	}
}

// TestKeyRecordRollbackCases covers the other shapes of the attack.
func TestKeyRecordRollbackCases(t *testing.T) {
	ctx := context.Background()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("deleted record", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ward.db")
		a := openAuthority(t, path, signer, true)
		if _, err := a.m.Create(ctx, "k", "internal", ""); err != nil {
			t.Fatal(err)
		}
		a.close()
		raw, _ := boltstore.Open(path)
		if err := raw.Delete(ctx, a.m.path("k")); err != nil {
			t.Fatal(err)
		}
		raw.Close()
		b := openAuthority(t, path, signer, true)
		defer b.close()
		if _, err := b.m.Get(ctx, "k"); errs.KindOf(err) != errs.RolledBack {
			t.Fatalf("Get of deleted record: %v", err)
		}
		// Re-creating it under the same name would hide the deletion.
		if _, err := b.m.Create(ctx, "k", "internal", ""); errs.KindOf(err) != errs.RolledBack {
			t.Fatalf("Create over a deleted record: %v", err)
		}
	})
	t.Run("live rollback through the watch", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ward.db")
		a := openAuthority(t, path, signer, true)
		defer a.close()
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go a.m.Watch(wctx)
		if _, err := a.m.Create(ctx, "k", "internal", ""); err != nil {
			t.Fatal(err)
		}
		ct1, _, _ := a.m.Encrypt(ctx, "k", []byte("v1"), nil)
		a.m.Rotate(ctx, "k")
		old, _ := a.raw.Get(ctx, a.m.path("k"))
		if _, err := a.m.Destroy(ctx, "k", 1); err != nil {
			t.Fatal(err)
		}
		if _, err := a.raw.Put(ctx, a.m.path("k"), old.Value); err != nil {
			t.Fatal(err)
		}
		// Poll (bounded) until the watch delivered the change; never may
		// the destroyed version decrypt.
		var derr error
		for i := 0; i < 500; i++ {
			_, _, derr = a.m.Decrypt(ctx, ct1, nil)
			if derr == nil {
				t.Fatal("destroyed version decrypted after the record was copied back")
			}
			if errs.KindOf(derr) == errs.RolledBack {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		kind(t, derr, errs.RolledBack)
	})
	t.Run("legitimate history passes", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ward.db")
		a := openAuthority(t, path, signer, true)
		a.m.Create(ctx, "k", "internal", "")
		a.m.Rotate(ctx, "k")
		a.m.SetEnabled(ctx, "k", 1, false)
		a.m.SetEnabled(ctx, "k", 1, true)
		a.m.SetMinDecryptVersion(ctx, "k", 1)
		a.close()
		b := openAuthority(t, path, signer, true)
		defer b.close()
		v, err := b.m.Get(ctx, "k")
		if err != nil || v.Revision != 5 {
			t.Fatalf("Get after restart: revision %d, %v", v.Revision, err)
		}
		if _, err := b.m.Rotate(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	})
}

var _ store.Store = (*boltstore.Store)(nil)

// TestCreateExistingKeyStillSaysExists: the deleted-record check must not
// change the answer for a key that simply exists.
func TestCreateExistingKeyStillSaysExists(t *testing.T) {
	ctx := context.Background()
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a := openAuthority(t, filepath.Join(t.TempDir(), "ward.db"), signer, true)
	defer a.close()
	if _, err := a.m.Create(ctx, "k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	_, err := a.m.Create(ctx, "k", "internal", "")
	kind(t, err, errs.Exists)
}

// TestRevisedRecordUnknownToTheLogIsRefused runs the audit-wipe attack on
// the KMS alone: the attacker deletes every audit/ key (so the log the
// witness reads starts empty, under a new signing key) and copies back a
// record from before a destroy. A revised record the log never heard of is
// refused; a record from before records carried revisions (revision 0)
// still works.
func TestRevisedRecordUnknownToTheLogIsRefused(t *testing.T) {
	ctx := context.Background()
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	path := filepath.Join(t.TempDir(), "ward.db")
	a := openAuthority(t, path, signer, true)
	if _, err := a.m.Create(ctx, "k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	ct1, _, err := a.m.Encrypt(ctx, "k", []byte("under v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.Rotate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	old, _ := a.raw.Get(ctx, a.m.path("k"))
	if _, err := a.m.Destroy(ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	// A key written before records carried revisions.
	if _, err := a.m.Create(ctx, "legacy", "internal", ""); err != nil {
		t.Fatal(err)
	}
	kv, err := a.m.st.Get(ctx, a.m.path("legacy"))
	if err != nil {
		t.Fatal(err)
	}
	var rec KeyRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		t.Fatal(err)
	}
	rec.Revision = 0
	b, _ := json.Marshal(rec)
	if _, err := a.m.st.Put(ctx, a.m.path("legacy"), b); err != nil {
		t.Fatal(err)
	}
	a.close()

	raw, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, a.m.path("k"), old.Value); err != nil {
		t.Fatal(err)
	}
	kvs, err := raw.List(ctx, "audit/")
	if err != nil || len(kvs) == 0 {
		t.Fatalf("listing audit/: %d keys, %v", len(kvs), err)
	}
	for _, kv := range kvs {
		if err := raw.Delete(ctx, kv.Key); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	fresh, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // what the old server made
	c := openAuthority(t, path, fresh, true)
	defer c.close()
	pt, _, err := c.m.Decrypt(ctx, ct1, nil)
	if err == nil {
		t.Fatalf("the destroyed version decrypted again after the audit log was wiped: %q", pt)
	}
	kind(t, err, errs.RolledBack)
	for _, want := range []string{`"k"`, "revision 2", "no event", "wiped", "Restore"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("decrypt error lacks %q: %v", want, err)
		}
	}
	if n := c.m.RollbacksDetected(); n != 1 {
		t.Errorf("RollbacksDetected = %d, want 1", n)
	}
	if evs := c.events(t, "key.rollback_detected"); len(evs) != 1 || evs[0].Key != "k" {
		t.Errorf("rollback audit events: %+v", evs)
	}
	if _, err := c.m.Get(ctx, "legacy"); err != nil {
		t.Fatalf("a revision-0 record (from before revisions) is refused: %v", err)
	}
}

// TestEventsThroughTheRecorder: on a real log, a data operation's event
// carries the caller and its encryption context only as HMACs under
// "context.<key>", and a key change carries record_revision and
// record_digest for the rollback index.
func TestEventsThroughTheRecorder(t *testing.T) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := openAuthority(t, filepath.Join(t.TempDir(), "ward.db"), signer, true)
	defer a.close()
	ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "admin:uid=0", RequestID: "req-9"})
	if _, err := a.m.Create(ctx, "k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	const secret = "tenant-in-clear"
	if _, _, err := a.m.Encrypt(ctx, "k", []byte("x"), map[string]string{"tenant": secret}); err != nil {
		t.Fatal(err)
	}
	enc := a.events(t, "kms.encrypt")
	if len(enc) != 1 || enc[0].Actor != "admin:uid=0" || enc[0].RequestID != "req-9" || enc[0].KeyVersion != 1 {
		t.Fatalf("encrypt events %+v", enc)
	}
	if v := enc[0].Fields["context.tenant"]; !strings.HasPrefix(v, audit.HashPrefix) || strings.Contains(v, secret) {
		t.Fatalf("context field %q, want an HMAC", v)
	}
	created := a.events(t, "key.create")
	if len(created) != 2 || created[1].Result != audit.ResultOK || created[1].Fields["record_revision"] != "1" ||
		!strings.HasPrefix(created[1].Fields["record_digest"], "hmac-sha256:") {
		t.Fatalf("key.create events %+v", created)
	}
}
