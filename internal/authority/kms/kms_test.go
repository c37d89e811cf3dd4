package kms

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// recorder is an audit.Recorder that keeps events and can be made to fail.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
	fail   bool
}

func (r *recorder) Record(_ context.Context, a audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("disk full")
	}
	r.events = append(r.events, a)
	return nil
}

func openStore(t testing.TB) store.Store {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newManager(t testing.TB, st store.Store) (*Manager, *recorder, *clock.Fake) {
	rec := &recorder{}
	clk := clock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	m, err := New(st, bytes.Repeat([]byte{7}, 32), DefaultTable(), rec, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return m, rec, clk
}

func kind(t *testing.T, err error, want errs.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want kind %v", want)
	}
	if got := errs.KindOf(err); got != want {
		t.Fatalf("error %q has kind %v, want %v", err, got, want)
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	m, rec, _ := newManager(t, openStore(t))
	if _, err := m.Create(ctx, "tenant-a/payments", "confidential", "cards"); err != nil {
		t.Fatal(err)
	}
	_, err := m.Create(ctx, "tenant-a/payments", "confidential", "")
	kind(t, err, errs.Exists)
	_, err = m.Create(ctx, "Bad Name", "confidential", "")
	kind(t, err, errs.Invalid)
	_, err = m.Create(ctx, "x", "top-secret", "")
	kind(t, err, errs.Invalid)
	if !strings.Contains(err.Error(), "restricted") {
		t.Errorf("unknown classification error should list the valid ones: %v", err)
	}

	ectx := map[string]string{"tenant": "a"}
	ct1, v, err := m.Encrypt(ctx, "tenant-a/payments", []byte("secret"), ectx)
	if err != nil || v != 1 {
		t.Fatalf("encrypt: v=%d err=%v", v, err)
	}
	if _, err := m.Rotate(ctx, "tenant-a/payments"); err != nil {
		t.Fatal(err)
	}
	ct2, v, _ := m.Encrypt(ctx, "tenant-a/payments", []byte("secret2"), ectx)
	if v != 2 {
		t.Fatalf("after rotate version = %d", v)
	}
	// Old version still decrypts.
	pt, h, err := m.Decrypt(ctx, ct1, ectx)
	if err != nil || string(pt) != "secret" || h.Version != 1 {
		t.Fatalf("decrypt v1: %q %v", pt, err)
	}
	// Wrong context.
	_, _, err = m.Decrypt(ctx, ct1, map[string]string{"tenant": "b"})
	kind(t, err, errs.Denied)
	// Rewrap v1 -> v2 without exposing plaintext.
	rw, v, err := m.Rewrap(ctx, ct1, ectx)
	if err != nil || v != 2 {
		t.Fatalf("rewrap: %d %v", v, err)
	}
	if pt, _, _ := m.Decrypt(ctx, rw, ectx); string(pt) != "secret" {
		t.Fatal("rewrapped ciphertext does not decrypt to the original")
	}
	// min-decrypt-version.
	if _, err := m.SetMinDecryptVersion(ctx, "tenant-a/payments", 2); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Decrypt(ctx, ct1, ectx)
	kind(t, err, errs.Precondition)
	if !strings.Contains(err.Error(), "min-decrypt-version") {
		t.Errorf("error should name min-decrypt-version: %v", err)
	}
	_, err = m.SetMinDecryptVersion(ctx, "tenant-a/payments", 9)
	kind(t, err, errs.Invalid)
	m.SetMinDecryptVersion(ctx, "tenant-a/payments", 1)
	// disable / enable.
	_, err = m.SetEnabled(ctx, "tenant-a/payments", 2, false)
	kind(t, err, errs.Precondition) // active version
	if _, err := m.SetEnabled(ctx, "tenant-a/payments", 1, false); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Decrypt(ctx, ct1, ectx)
	kind(t, err, errs.Precondition)
	if !strings.Contains(err.Error(), "disabled") {
		t.Errorf("want 'disabled' in %v", err)
	}
	m.SetEnabled(ctx, "tenant-a/payments", 1, true)
	if _, _, err := m.Decrypt(ctx, ct1, ectx); err != nil {
		t.Fatalf("re-enabled version: %v", err)
	}
	// destroy.
	_, err = m.Destroy(ctx, "tenant-a/payments", 2)
	kind(t, err, errs.Precondition)
	if _, err := m.Destroy(ctx, "tenant-a/payments", 1); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Decrypt(ctx, ct1, ectx)
	kind(t, err, errs.Precondition)
	if !strings.Contains(err.Error(), "destroyed") {
		t.Errorf("want 'destroyed' in %v", err)
	}
	_, err = m.SetEnabled(ctx, "tenant-a/payments", 1, true)
	kind(t, err, errs.Precondition)
	if _, _, err := m.Decrypt(ctx, ct2, ectx); err != nil {
		t.Fatalf("v2 after destroying v1: %v", err)
	}
	// Unknown key, truncated ciphertext, not a ciphertext.
	_, _, err = m.Encrypt(ctx, "nope", []byte("x"), nil)
	kind(t, err, errs.NotFound)
	_, _, err = m.Decrypt(ctx, ct2[:len(ct2)-3], ectx)
	kind(t, err, errs.Denied)
	_, _, err = m.Decrypt(ctx, []byte("hello"), nil)
	kind(t, err, errs.Invalid)
	_, _, err = m.Decrypt(ctx, []byte(kmsfmt.Armor(ct2)), ectx)
	if err != nil {
		t.Fatalf("armored ciphertext: %v", err)
	}
	// Oversized payload.
	_, _, err = m.Encrypt(ctx, "tenant-a/payments", make([]byte, MaxPlaintext+1), nil)
	kind(t, err, errs.Invalid)

	v1, _ := m.Get(ctx, "tenant-a/payments")
	if v1.DisplayState(&v1.Versions[0]) != "destroyed" || v1.DisplayState(&v1.Versions[1]) != "active" || v1.Versions[0].Material != nil {
		t.Fatalf("view: %+v", v1.Versions)
	}
	for _, ev := range rec.events {
		for k, val := range ev.Fields {
			if strings.Contains(val, "secret2") || strings.Contains(val, "tenant") && k != "classification" {
				t.Fatalf("audit field %s leaks plaintext", k)
			}
		}
	}
}

func TestKeepVersionsDisablesOldOnes(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newManager(t, openStore(t))
	m.Create(ctx, "r", "restricted", "")
	var cts [][]byte
	for i := 0; i < 5; i++ {
		ct, _, err := m.Encrypt(ctx, "r", []byte{byte(i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
		m.Rotate(ctx, "r")
	}
	// 6 versions, restricted keeps 3: versions 1..3 disabled.
	for i, ct := range cts {
		_, _, err := m.Decrypt(ctx, ct, nil)
		if v := i + 1; v <= 3 && errs.KindOf(err) != errs.Precondition {
			t.Errorf("version %d should be disabled, err=%v", v, err)
		} else if v > 3 && err != nil {
			t.Errorf("version %d should decrypt: %v", v, err)
		}
	}
}

func TestScheduledRotation(t *testing.T) {
	ctx := context.Background()
	m, rec, clk := newManager(t, openStore(t))
	m.Create(ctx, "a", "restricted", "")
	m.Create(ctx, "b", "public", "")
	got, err := m.RotateDue(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("nothing due yet: %v %v", got, err)
	}
	clk.Advance(31 * day)
	got, _ = m.RotateDue(ctx)
	if len(got) != 1 || got[0] != "a" {
		t.Fatalf("rotated %v, want [a]", got)
	}
	k, _ := m.Get(ctx, "a")
	if k.Latest() != 2 || !k.NextRotation.Equal(clk.Now().Add(30*day)) {
		t.Fatalf("after scheduled rotation: latest %d next %s", k.Latest(), k.NextRotation)
	}
	found := false
	for _, e := range rec.events {
		if e.Operation == "key.rotate" && e.Fields["trigger"] == "schedule" {
			found = true
		}
	}
	if !found {
		t.Fatal("scheduled rotation not audited")
	}
}

func TestAuditFailureFailsClosed(t *testing.T) {
	ctx := context.Background()
	m, rec, _ := newManager(t, openStore(t))
	m.Create(ctx, "k", "internal", "")
	ct, _, _ := m.Encrypt(ctx, "k", []byte("x"), nil)
	rec.fail = true
	if ct2, _, err := m.Encrypt(ctx, "k", []byte("x"), nil); errs.KindOf(err) != errs.Unavailable || ct2 != nil {
		t.Fatalf("encrypt with audit down: %v", err)
	}
	if pt, _, err := m.Decrypt(ctx, ct, nil); errs.KindOf(err) != errs.Unavailable || pt != nil {
		t.Fatalf("decrypt with audit down returned plaintext or wrong error: %v", err)
	}
	if _, err := m.Rotate(ctx, "k"); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("rotate with audit down: %v", err)
	}
	if _, err := m.Create(ctx, "k2", "internal", ""); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("create with audit down: %v", err)
	}
	rec.fail = false
	k, _ := m.Get(ctx, "k")
	if k.Latest() != 1 {
		t.Fatalf("rotation happened although it could not be audited: latest %d", k.Latest())
	}
	if _, err := m.Get(ctx, "k2"); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("k2 was created although unaudited: %v", err)
	}
}

func TestTwoManagersShareAStore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := openStore(t)
	a, _, _ := newManager(t, st)
	b, _, _ := newManager(t, st)
	go b.Watch(ctx)
	a.Create(ctx, "shared", "internal", "")
	ct, _, err := b.Encrypt(ctx, "shared", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rotate(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	// b sees the rotation through its watch (bounded wait).
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, v, _ := b.Encrypt(ctx, "shared", []byte("y"), nil)
		if v == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b never saw a's rotation")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := a.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	// Concurrent rotations from both: no lost version.
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(2)
		for _, m := range []*Manager{a, b} {
			go func() {
				defer wg.Done()
				if _, err := m.Rotate(ctx, "shared"); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	k, _ := a.Get(ctx, "shared")
	if k.Latest() != 22 {
		t.Fatalf("latest = %d after 2+20 rotations, want 22", k.Latest())
	}
}

func TestBatch(t *testing.T) {
	ctx := context.Background()
	m, rec, _ := newManager(t, openStore(t))
	m.Create(ctx, "k", "confidential", "")
	items := []Item{{Data: []byte("a")}, {Data: []byte("b"), Context: map[string]string{"x": "1"}}, {Data: make([]byte, MaxPlaintext+1)}}
	res, err := m.BatchEncrypt(ctx, "k", items)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[1].Err != nil || errs.KindOf(res[2].Err) != errs.Invalid {
		t.Fatalf("batch encrypt results: %+v", res)
	}
	dec, _ := m.BatchDecrypt(ctx, []Item{{Data: res[0].Data}, {Data: res[1].Data, Context: map[string]string{"x": "2"}}, {Data: []byte("junk")}})
	if string(dec[0].Data) != "a" || errs.KindOf(dec[1].Err) != errs.Denied || errs.KindOf(dec[2].Err) != errs.Invalid {
		t.Fatalf("batch decrypt: %+v", dec)
	}
	dks, err := m.BatchGenerateDataKey(ctx, "k", 100, 0, nil)
	if err != nil || len(dks) != 100 || len(dks[0].Plaintext) != 32 {
		t.Fatalf("batch datakey: %v", err)
	}
	if _, err := m.BatchEncrypt(ctx, "k", nil); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("empty batch: %v", err)
	}
	n := len(rec.events)
	if rec.events[n-1].Count != 100 || rec.events[n-1].Operation != "kms.datakey" {
		t.Fatalf("batch audit event: %+v", rec.events[n-1])
	}
}

func BenchmarkDataKeyInProcess(b *testing.B) {
	ctx := context.Background()
	m, _, _ := newManager(b, openStore(b))
	m.Create(ctx, "k", "confidential", "")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.GenerateDataKey(ctx, "k", 0, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEncryptDecryptRewrap(b *testing.B) {
	ctx := context.Background()
	m, _, _ := newManager(b, openStore(b))
	m.Create(ctx, "k", "confidential", "")
	pt := make([]byte, 32)
	ct, _, _ := m.Encrypt(ctx, "k", pt, nil)
	b.Run("encrypt", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Encrypt(ctx, "k", pt, nil)
			}
		})
	})
	b.Run("decrypt", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Decrypt(ctx, ct, nil)
			}
		})
	})
	b.Run("rewrap", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Rewrap(ctx, ct, nil)
			}
		})
	})
}
