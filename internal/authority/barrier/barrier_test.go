package barrier

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

func newRootKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}

// setup returns an initialised, unsealed barrier over a fresh memstore.
func setup(t testing.TB) (*Barrier, *memstore.Store, []byte) {
	t.Helper()
	ctx := context.Background()
	raw := memstore.New()
	root := newRootKey()
	b := New(raw)
	if err := b.Initialize(ctx, root); err != nil {
		t.Fatal(err)
	}
	if !b.Sealed() {
		t.Fatal("Initialize unsealed the barrier")
	}
	if err := b.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	return b, raw, root
}

func TestInitializeAndRoundTrip(t *testing.T) {
	ctx := context.Background()
	raw := memstore.New()
	b := New(raw)
	if ok, err := b.Initialized(ctx); ok || err != nil {
		t.Fatalf("Initialized before init = %v, %v", ok, err)
	}
	if err := b.Unseal(ctx, newRootKey()); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Unseal before init: %v", err)
	}
	root := newRootKey()
	if err := b.Initialize(ctx, root[:16]); err == nil {
		t.Fatal("Initialize accepted a 16-byte root key")
	}
	if err := b.Initialize(ctx, root); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Initialized(ctx); !ok || err != nil {
		t.Fatalf("Initialized after init = %v, %v", ok, err)
	}
	if err := b.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	v := b.Store()
	rev, err := v.Put(ctx, "kms/keys/a", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := v.Get(ctx, "kms/keys/a")
	if err != nil || string(kv.Value) != "hello" || kv.Revision != rev || kv.Key != "kms/keys/a" {
		t.Fatalf("Get = %+v, %v", kv, err)
	}
	// A fresh barrier (a restart) with the same root key reads it back.
	b2 := New(raw)
	if err := b2.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	if kv, err := b2.Store().Get(ctx, "kms/keys/a"); err != nil || string(kv.Value) != "hello" {
		t.Fatalf("after restart Get = %+v, %v", kv, err)
	}
}

func TestNothingWrittenContainsPlaintext(t *testing.T) {
	ctx := context.Background()
	b, raw, root := setup(t)
	v := b.Store()
	var secrets [][]byte
	secret := func(i int) []byte {
		s := []byte(fmt.Sprintf("PLAINTEXT-%03d-the-quick-brown-fox-jumps", i))
		secrets = append(secrets, s)
		return s
	}
	for i := 0; i < 20; i++ {
		if _, err := v.Put(ctx, fmt.Sprintf("put/%d", i), secret(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.CompareAndSwap(ctx, "cas/1", secret(100), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Batch(ctx, []store.Op{
		{Key: "batch/1", Value: secret(200), ExpectRevision: -1},
		{Key: "batch/2", Value: secret(201), ExpectRevision: 0},
	}); err != nil {
		t.Fatal(err)
	}
	dump := raw.RawBytes()
	for _, s := range secrets {
		// Also look for any 16-byte window of the plaintext.
		for off := 0; off+16 <= len(s); off += 8 {
			if bytes.Contains(dump, s[off:off+16]) {
				t.Fatalf("raw store contains plaintext %q", s[off:off+16])
			}
		}
	}
	b.mu.RLock()
	material := append([][]byte{root, b.derive}, b.keys...)
	b.mu.RUnlock()
	for i, k := range material {
		if bytes.Contains(dump, k) || bytes.Contains(dump, k[:16]) {
			t.Fatalf("raw store contains key material #%d", i)
		}
	}
	// Same plaintext twice gives different ciphertexts (random nonces).
	v.Put(ctx, "same/1", []byte("x"))
	v.Put(ctx, "same/2", []byte("x"))
	if bytes.Equal(raw.Raw("same/1")[headerSize:], raw.Raw("same/2")[headerSize:]) {
		t.Fatal("equal plaintexts produced equal ciphertexts")
	}
}

func TestWrongRootKeyChangesNothing(t *testing.T) {
	ctx := context.Background()
	b, raw, root := setup(t)
	v := b.Store()
	v.Put(ctx, "a", []byte("1"))
	before := raw.Raw(KeyringKey)

	wrong := bytes.Clone(root)
	wrong[0] ^= 1
	for _, k := range [][]byte{newRootKey(), wrong, root[:31], nil} {
		// Unsealed: stays unsealed with the same keys.
		if err := b.Unseal(ctx, k); !errors.Is(err, ErrBadRootKey) {
			t.Fatalf("Unseal(wrong) = %v, want ErrBadRootKey", err)
		}
		if b.Sealed() {
			t.Fatal("wrong root key sealed an unsealed barrier")
		}
		if kv, err := v.Get(ctx, "a"); err != nil || string(kv.Value) != "1" {
			t.Fatalf("Get after wrong key = %v, %v", kv, err)
		}
	}
	// Sealed: stays sealed.
	b.Seal()
	if err := b.Unseal(ctx, wrong); !errors.Is(err, ErrBadRootKey) || !b.Sealed() {
		t.Fatalf("sealed Unseal(wrong) = %v, sealed=%v", err, b.Sealed())
	}
	if _, err := v.Get(ctx, "a"); !errors.Is(err, ErrSealed) {
		t.Fatalf("Get after wrong unseal = %v", err)
	}
	if !bytes.Equal(before, raw.Raw(KeyringKey)) {
		t.Fatal("keyring changed")
	}
	// An altered keyring is indistinguishable from a wrong key.
	bad := bytes.Clone(before)
	bad[len(bad)-1] ^= 1
	raw.RawPut(KeyringKey, bad)
	if err := b.Unseal(ctx, root); !errors.Is(err, ErrBadRootKey) || !b.Sealed() {
		t.Fatalf("Unseal of altered keyring = %v", err)
	}
}

func TestInitializeTwiceAndAtomicity(t *testing.T) {
	ctx := context.Background()
	b, raw, _ := setup(t)
	before := raw.Raw(KeyringKey)
	err := b.Initialize(ctx, newRootKey(), store.Op{Key: "core/other", Value: []byte("x"), ExpectRevision: 0})
	if !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("second Initialize = %v", err)
	}
	if !bytes.Equal(before, raw.Raw(KeyringKey)) {
		t.Fatal("second Initialize changed the keyring")
	}
	if _, err := raw.Get(ctx, "core/other"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("second Initialize wrote its extra op")
	}

	// An extra op that conflicts stops the keyring being written.
	raw2 := memstore.New()
	raw2.Put(ctx, "core/seal-config", []byte("exists"))
	b2 := New(raw2)
	if err := b2.Initialize(ctx, newRootKey(), store.Op{Key: "core/seal-config", Value: []byte("new"), ExpectRevision: 0}); !errors.Is(err, store.ErrConflict) && !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("Initialize with conflicting op = %v", err)
	}
	if ok, _ := b2.Initialized(ctx); ok {
		t.Fatal("keyring written although the batch conflicted")
	}
	// A failing backend leaves nothing behind.
	raw3 := memstore.New()
	raw3.SetBatchHook(func([]store.Op) error { return errors.New("disk full") })
	if err := New(raw3).Initialize(ctx, newRootKey()); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Initialize on failing store = %v", err)
	}
	if len(raw3.RawBytes()) != 0 {
		t.Fatal("failing Initialize left data")
	}
	// Extra ops may not target the keyring itself.
	if err := New(memstore.New()).Initialize(ctx, newRootKey(), store.Op{Key: KeyringKey}); err == nil {
		t.Fatal("Initialize accepted an extra op on the keyring key")
	}
}

func TestTamperDetected(t *testing.T) {
	ctx := context.Background()
	b, raw, _ := setup(t)
	v := b.Store()
	v.Put(ctx, "secrets/a", []byte("value a"))
	good := raw.Raw("secrets/a")

	// A value written by another keyring (other root key, other barrier key).
	ob, oraw, _ := setup(t)
	ob.Store().Put(ctx, "secrets/a", []byte("value a"))
	foreign := oraw.Raw("secrets/a")

	flip := func(i int) []byte { c := bytes.Clone(good); c[i] ^= 0x01; return c }
	for _, tc := range []struct {
		name  string
		key   string
		value []byte
	}{
		{"moved to another key", "secrets/b", good},
		{"ciphertext bit flipped", "secrets/a", flip(len(good) - 20)},
		{"tag bit flipped", "secrets/a", flip(len(good) - 1)},
		{"nonce bit flipped", "secrets/a", flip(headerSize)},
		{"term relabelled", "secrets/a", flip(4)},
		{"format byte changed", "secrets/a", flip(0)},
		{"truncated", "secrets/a", good[:len(good)-1]},
		{"too short", "secrets/a", good[:headerSize+3]},
		{"empty", "secrets/a", nil},
		{"plaintext written around the barrier", "secrets/a", []byte("value a")},
		{"written by another keyring", "secrets/a", foreign},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw.RawPut(tc.key, tc.value)
			_, err := v.Get(ctx, tc.key)
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("Get = %v, want ErrAuth", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("stored value for %q", tc.key)) {
				t.Fatalf("error does not name the key: %v", err)
			}
			if strings.Contains(err.Error(), "value a") {
				t.Fatalf("error leaks plaintext: %v", err)
			}
			if _, err := v.List(ctx, "secrets/"); !errors.Is(err, ErrAuth) {
				t.Fatalf("List = %v, want ErrAuth", err)
			}
			raw.RawPut(tc.key, good)
			if tc.key != "secrets/a" {
				raw.Delete(ctx, tc.key)
			}
		})
	}
	if _, err := v.Get(ctx, "secrets/a"); err != nil {
		t.Fatal(err)
	}
	// The error text for a moved value is the documented one.
	raw.RawPut("secrets/c", good)
	_, err := v.Get(ctx, "secrets/c")
	want := `stored value for "secrets/c" failed authentication: altered, moved or written by another keyring`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want it to contain %q", err, want)
	}
	// An unknown term says so.
	unk := bytes.Clone(good)
	unk[1], unk[2], unk[3], unk[4] = 0, 0, 0, 7
	raw.RawPut("secrets/d", unk)
	if _, err := v.Get(ctx, "secrets/d"); !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "keyring term 7") {
		t.Fatalf("unknown term error = %v", err)
	}
}

func TestSealedRefusesEverything(t *testing.T) {
	ctx := context.Background()
	b, raw, root := setup(t)
	v := b.Store()
	v.Put(ctx, "a", []byte("1"))
	b.mu.RLock()
	held := append([][]byte{b.derive}, b.keys...)
	b.mu.RUnlock()
	b.Seal()
	if !b.Sealed() {
		t.Fatal("Sealed() = false after Seal")
	}
	for i, k := range held {
		if !bytes.Equal(k, make([]byte, len(k))) {
			t.Fatalf("key material #%d not zeroed by Seal", i)
		}
	}
	before := raw.RawBytes()
	calls := map[string]func() error{
		"get":    func() error { _, err := v.Get(ctx, "a"); return err },
		"put":    func() error { _, err := v.Put(ctx, "a", []byte("2")); return err },
		"delete": func() error { return v.Delete(ctx, "a") },
		"list":   func() error { _, err := v.List(ctx, ""); return err },
		"cas":    func() error { _, err := v.CompareAndSwap(ctx, "b", []byte("2"), 0); return err },
		"batch": func() error {
			_, err := v.Batch(ctx, []store.Op{{Key: "b", Value: []byte("2"), ExpectRevision: -1}})
			return err
		},
		"watch":  func() error { _, err := v.Watch(ctx, ""); return err },
		"derive": func() error { _, err := b.DeriveKey("audit"); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrSealed) {
			t.Errorf("%s while sealed = %v, want ErrSealed", name, err)
		}
	}
	if !bytes.Equal(before, raw.RawBytes()) {
		t.Fatal("sealed view changed the store")
	}
	b.Seal() // idempotent
	if err := b.Unseal(ctx, root); err != nil {
		t.Fatal(err)
	}
	if kv, err := v.Get(ctx, "a"); err != nil || string(kv.Value) != "1" {
		t.Fatalf("Get after reunseal = %v, %v", kv, err)
	}
}

func TestReservedKeys(t *testing.T) {
	ctx := context.Background()
	b, raw, _ := setup(t)
	v := b.Store()
	before := raw.Raw(KeyringKey)
	calls := map[string]func() error{
		"get":    func() error { _, err := v.Get(ctx, KeyringKey); return err },
		"put":    func() error { _, err := v.Put(ctx, KeyringKey, []byte("x")); return err },
		"delete": func() error { return v.Delete(ctx, KeyringKey) },
		"list":   func() error { _, err := v.List(ctx, "core/"); return err },
		"cas":    func() error { _, err := v.CompareAndSwap(ctx, "core/seal-config", nil, 0); return err },
		"batch": func() error {
			_, err := v.Batch(ctx, []store.Op{{Key: "ok", ExpectRevision: -1}, {Key: "core/x", ExpectRevision: -1}})
			return err
		},
		"watch": func() error { _, err := v.Watch(ctx, "core/"); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrReservedKey) {
			t.Errorf("%s on reserved key = %v, want ErrReservedKey", name, err)
		}
	}
	if _, err := raw.Get(ctx, "ok"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("batch with a reserved key applied its other ops")
	}
	if !bytes.Equal(before, raw.Raw(KeyringKey)) {
		t.Fatal("keyring changed")
	}
	v.Put(ctx, "core", []byte("not reserved: no slash"))
	v.Put(ctx, "corex/1", []byte("y"))
	for _, p := range []string{"", "c", "core"} {
		kvs, err := v.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) != 2 || kvs[0].Key != "core" || kvs[1].Key != "corex/1" {
			t.Fatalf("List(%q) = %v", p, kvs)
		}
	}
	if _, err := v.Put(ctx, "", []byte("x")); err == nil {
		t.Fatal("Put accepted an empty key")
	}
}

func TestViewContract(t *testing.T) {
	ctx := context.Background()
	b, _, _ := setup(t)
	v := b.Store()
	if v.Backend() != "memory" || v.MaxBatch() != memstore.DefaultMaxBatch {
		t.Fatalf("Backend/MaxBatch = %q/%d", v.Backend(), v.MaxBatch())
	}
	if _, err := v.Get(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing = %v", err)
	}
	r1, err := v.CompareAndSwap(ctx, "k", []byte("v1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.CompareAndSwap(ctx, "k", []byte("v2"), 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CAS create on existing = %v", err)
	}
	r2, err := v.CompareAndSwap(ctx, "k", []byte("v2"), r1)
	if err != nil || r2 <= r1 {
		t.Fatalf("CAS = %d, %v", r2, err)
	}
	if _, err := v.CompareAndSwap(ctx, "k", []byte("v3"), r1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale CAS = %v", err)
	}
	if _, err := v.Put(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if kv, err := v.Get(ctx, "empty"); err != nil || len(kv.Value) != 0 {
		t.Fatalf("empty value = %v, %v", kv, err)
	}
	// Batch: all or nothing.
	if _, err := v.Batch(ctx, []store.Op{
		{Key: "b1", Value: []byte("x"), ExpectRevision: -1},
		{Key: "k", Value: []byte("y"), ExpectRevision: r1},
	}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting batch = %v", err)
	}
	if _, err := v.Get(ctx, "b1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("conflicting batch applied an op")
	}
	br, err := v.Batch(ctx, []store.Op{
		{Key: "b1", Value: []byte("x"), ExpectRevision: 0},
		{Key: "k", Delete: true, ExpectRevision: r2},
	})
	if err != nil {
		t.Fatal(err)
	}
	if kv, _ := v.Get(ctx, "b1"); string(kv.Value) != "x" || kv.Revision != br {
		t.Fatalf("batch wrote %+v", kv)
	}
	if err := v.Delete(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if err := v.Delete(ctx, "b1"); err != nil {
		t.Fatalf("deleting a missing key = %v", err)
	}
	for _, k := range []string{"l/c", "l/a", "l/b"} {
		v.Put(ctx, k, []byte(k))
	}
	kvs, err := v.List(ctx, "l/")
	if err != nil || len(kvs) != 3 {
		t.Fatal(kvs, err)
	}
	for i, want := range []string{"l/a", "l/b", "l/c"} {
		if kvs[i].Key != want || string(kvs[i].Value) != want {
			t.Fatalf("List[%d] = %+v", i, kvs[i])
		}
	}
	// Closing the view ends it but not the raw store or other views.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Get(ctx, "l/a"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Get on closed view = %v", err)
	}
	if err := v.Close(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := b.Store().Get(ctx, "l/a"); err != nil {
		t.Fatal(err)
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, raw, root := setup(t)
	v := b.Store()
	ch, err := v.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	v.Put(ctx, "w/1", []byte("one"))
	raw.Put(ctx, "core/seal-config", []byte("hidden")) // not delivered
	v.Delete(ctx, "w/1")
	ev := <-ch
	if ev.Type != store.EventPut || ev.Key != "w/1" || string(ev.Value) != "one" {
		t.Fatalf("event 1 = %+v", ev)
	}
	ev = <-ch
	if ev.Type != store.EventDelete || ev.Key != "w/1" || ev.Value != nil {
		t.Fatalf("event 2 = %+v", ev)
	}
	// Sealing ends the watch.
	b.Seal()
	for range ch {
		t.Fatal("event after Seal")
	}
	// A tampered value ends the watch instead of delivering it.
	b.Unseal(ctx, root)
	ch, _ = v.Watch(ctx, "w/")
	raw.Put(ctx, "w/2", []byte("not encrypted at all, padding...."))
	for ev := range ch {
		t.Fatalf("tampered event delivered: %+v", ev)
	}
	// Closing the view ends its watches; cancelling ctx too.
	ch, _ = v.Watch(ctx, "w/")
	v.Close()
	for range ch {
	}
	wctx, wcancel := context.WithCancel(ctx)
	ch, _ = b.Store().Watch(wctx, "w/")
	wcancel()
	for range ch {
	}
}

func TestDeriveKey(t *testing.T) {
	ctx := context.Background()
	b, raw, root := setup(t)
	k1, err := b.DeriveKey("audit hmac")
	if err != nil || len(k1) != KeySize {
		t.Fatal(k1, err)
	}
	k2, _ := b.DeriveKey("path hmac")
	if bytes.Equal(k1, k2) {
		t.Fatal("distinct purposes gave the same key")
	}
	if _, err := b.DeriveKey(""); err == nil {
		t.Fatal("empty purpose accepted")
	}
	b.Seal()
	b.Unseal(ctx, root)
	if again, _ := b.DeriveKey("audit hmac"); !bytes.Equal(again, k1) {
		t.Fatal("derived key changed across seal/unseal")
	}
	b2 := New(raw)
	b2.Unseal(ctx, root)
	if again, _ := b2.DeriveKey("audit hmac"); !bytes.Equal(again, k1) {
		t.Fatal("derived key changed across restart")
	}
	other, _, _ := setup(t)
	if ok, _ := other.DeriveKey("audit hmac"); bytes.Equal(ok, k1) {
		t.Fatal("two keyrings derived the same key")
	}
}

func TestConcurrentSealUnseal(t *testing.T) {
	ctx := context.Background()
	b, _, root := setup(t)
	v := b.Store()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				key := fmt.Sprintf("c/%d/%d", g, i%10)
				if _, err := v.Put(ctx, key, []byte(key)); err != nil && !errors.Is(err, ErrSealed) {
					errs <- err
					return
				}
				kv, err := v.Get(ctx, key)
				if err == nil && string(kv.Value) != key {
					errs <- fmt.Errorf("Get %s = %q", key, kv.Value)
					return
				}
				if err != nil && !errors.Is(err, ErrSealed) && !errors.Is(err, store.ErrNotFound) {
					errs <- err
					return
				}
				b.DeriveKey("x")
				b.Sealed()
			}
		}(g)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100; i++ {
			b.Seal()
			if err := b.Unseal(ctx, root); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func FuzzOpenValue(f *testing.F) {
	b, raw, _ := setup(f)
	b.Store().Put(context.Background(), "k", []byte("seed"))
	f.Add("k", raw.Raw("k"))
	f.Add("k", []byte{1, 0, 0, 0, 1})
	f.Add("", []byte{})
	lookup, _ := b.lookup()
	f.Fuzz(func(t *testing.T, key string, v []byte) {
		_, pt, err := openValue(lookup, key, v)
		if err == nil && !(key == "k" && string(pt) == "seed") {
			t.Fatalf("forged value accepted for %q: %q", key, pt)
		}
		if err != nil && !errors.Is(err, ErrAuth) {
			t.Fatalf("error does not wrap ErrAuth: %v", err)
		}
	})
}

func benchValue() []byte {
	v := make([]byte, 1024)
	rand.Read(v)
	return v
}

func BenchmarkViewPut1K(b *testing.B) {
	br, _, _ := setup(b)
	v, val, ctx := br.Store(), benchValue(), context.Background()
	b.SetBytes(int64(len(val)))
	for b.Loop() {
		v.Put(ctx, "bench/key", val)
	}
}

func BenchmarkViewGet1K(b *testing.B) {
	br, _, _ := setup(b)
	v, val, ctx := br.Store(), benchValue(), context.Background()
	v.Put(ctx, "bench/key", val)
	b.SetBytes(int64(len(val)))
	for b.Loop() {
		if _, err := v.Get(ctx, "bench/key"); err != nil {
			b.Fatal(err)
		}
	}
}

// Baselines: the same operations on the raw store, to show barrier cost.
func BenchmarkRawPut1K(b *testing.B) {
	raw, val, ctx := memstore.New(), benchValue(), context.Background()
	b.SetBytes(int64(len(val)))
	for b.Loop() {
		raw.Put(ctx, "bench/key", val)
	}
}

func BenchmarkRawGet1K(b *testing.B) {
	raw, val, ctx := memstore.New(), benchValue(), context.Background()
	raw.Put(ctx, "bench/key", val)
	b.SetBytes(int64(len(val)))
	for b.Loop() {
		raw.Get(ctx, "bench/key")
	}
}
