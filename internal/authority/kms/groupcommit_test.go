package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"sync"
	"testing"

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
	if _, err := m.Create(ctx, "k", "internal", ""); err != nil {
		t.Fatal(err)
	}
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
