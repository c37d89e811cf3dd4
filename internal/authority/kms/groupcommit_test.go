package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// TestConcurrentEncryptsFailClosedWithTheirGroup drives the real audit log
// (group commit) from concurrent callers: while its store fails, every
// caller sharing a failed commit is refused and gets no ciphertext; once
// the store is back, every caller gets a ciphertext whose event is stored.
func TestConcurrentEncryptsFailClosedWithTheirGroup(t *testing.T) {
	ctx := context.Background()
	m, l, ast := auditedManager(t, "internal")
	const n = 32
	encryptAll := func() ([][]byte, []error) {
		cts, errs := make([][]byte, n), make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { cts[i], _, errs[i] = m.Encrypt(ctx, "k", []byte("x"), map[string]string{"i": "v"}) })
		}
		wg.Wait()
		return cts, errs
	}

	errDown := errors.New("disk on fire")
	ast.SetBatchHook(func([]store.Op) error { return errDown })
	size := l.Size()
	cts, errList := encryptAll()
	for i := range n {
		if errs.KindOf(errList[i]) != errs.Unavailable || cts[i] != nil {
			t.Fatalf("caller %d with the audit store down: ciphertext %v, error %v; want no ciphertext and Unavailable", i, cts[i] != nil, errList[i])
		}
	}
	if l.Size() != size {
		t.Fatalf("audit log grew from %d to %d although every commit failed", size, l.Size())
	}

	ast.SetBatchHook(nil)
	commits := l.Commits()
	cts, errList = encryptAll()
	for i := range n {
		if errList[i] != nil || cts[i] == nil {
			t.Fatalf("caller %d after recovery: %v", i, errList[i])
		}
	}
	if l.Size() != size+n {
		t.Fatalf("audit log holds %d events, want %d", l.Size(), size+n)
	}
	if c := l.Commits() - commits; c < 1 || c > n {
		t.Fatalf("%d commits for %d events", c, n)
	}
}

// TestResultsOnlyOnceTheirEventsAreStored: an encrypt or decrypt through
// the real audit log hands back its result only once the group commit
// holding its event is in the store. While the store holds a commit, none
// of its callers returns; every result handed back is covered by the
// events stored at that moment (a log that released its callers before
// storing, or an operation that returned before its event, fails here).
func TestResultsOnlyOnceTheirEventsAreStored(t *testing.T) {
	ctx := context.Background()
	m, _, ast := auditedManager(t, "confidential")
	ct, _, err := m.Encrypt(ctx, "k", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	stored := func() int {
		kvs, err := ast.List(ctx, "audit/e/")
		if err != nil {
			t.Error(err)
		}
		return len(kvs)
	}
	base := stored()

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ast.SetBatchHook(func([]store.Op) error {
		once.Do(func() { close(entered) })
		<-release
		return nil
	})
	const n = 32
	var returned atomic.Int64
	var wg sync.WaitGroup
	problems := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			var out []byte
			var err error
			if i%2 == 0 {
				out, _, err = m.Encrypt(ctx, "k", []byte("secret"), nil)
			} else {
				out, _, err = m.Decrypt(ctx, ct, nil)
			}
			if err != nil || out == nil {
				problems <- fmt.Sprintf("caller %d: %v", i, err)
				return
			}
			r := returned.Add(1)
			if s := stored() - base; s < int(r) {
				problems <- fmt.Sprintf("caller %d got its result as the %dth while only %d of their events were stored", i, r, s)
			}
		})
	}
	<-entered // the committer holds the first group in the store
	// Give a log that releases early every chance to show it (a wait, not
	// a timing assertion).
	for i := 0; i < 50 && returned.Load() == 0; i++ {
		time.Sleep(200 * time.Microsecond)
	}
	if r := returned.Load(); r != 0 {
		t.Errorf("%d callers got their results while their audit commit was still held in the store", r)
	}
	close(release)
	wg.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	if got := stored() - base; got != n {
		t.Fatalf("%d events stored for %d results", got, n)
	}
}

// auditedManager is a Manager whose events go through the real audit log
// (group commit, returned) onto ast, an in-memory store the test can hold or fail,
// with one key "k" of the given classification.
func auditedManager(t *testing.T, classification string) (*Manager, *audit.Log, *memstore.Store) {
	t.Helper()
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ast := memstore.New()
	l, err := audit.Open(ctx, ast, key, "ward/example.org")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	h, err := audit.NewHasher(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(openStore(t), bytes.Repeat([]byte{7}, 32), DefaultTable(), audit.NewLogRecorder(l, h))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "k", classification, ""); err != nil {
		t.Fatal(err)
	}
	return m, l, ast
}
