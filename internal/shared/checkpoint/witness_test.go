package checkpoint

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
)

// testLog is an RFC 6962 tree whose heads a key signs.
type testLog struct {
	t      *testing.T
	key    *ecdsa.PrivateKey
	origin string
	tree   *testonly.Tree
}

func newTestLog(t *testing.T, key *ecdsa.PrivateKey, origin string, from, n int) *testLog {
	l := &testLog{t: t, key: key, origin: origin, tree: testonly.New(rfc6962.DefaultHasher)}
	l.append(from, n)
	return l
}

// append adds events from..from+n-1 (the same events for the same numbers,
// so two logs agree on a prefix).
func (l *testLog) append(from, n int) {
	for i := from; i < from+n; i++ {
		l.tree.AppendData([]byte(fmt.Sprint("event ", i)))
	}
}

func (l *testLog) head() Checkpoint {
	l.t.Helper()
	cp, err := Sign(l.key, l.origin, l.tree.Size(), l.tree.Hash(), time.Date(2026, 1, 1, 0, 0, int(l.tree.Size()), 0, time.UTC))
	if err != nil {
		l.t.Fatal(err)
	}
	return cp
}

func (l *testLog) proofFrom(size uint64) [][]byte {
	if size == 0 || size >= l.tree.Size() {
		return nil
	}
	p, err := l.tree.ConsistencyProof(size, l.tree.Size())
	if err != nil {
		l.t.Fatal(err)
	}
	return p
}

// TestWitnessAdvance: the agent's use. A head moves the memory forward only
// with a consistency proof from the remembered one; a truncated, forked,
// rewritten, re-keyed or other log is refused and changes nothing, in
// memory and on disk.
func TestWitnessAdvance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit-checkpoint.json")
	mem, err := OpenFileMemory(path)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWitness(mem)
	key := newKey(t)
	real := newTestLog(t, key, "ward/agent.test", 0, 10)
	if err := w.Advance(real.head(), &key.PublicKey, nil); err != nil {
		t.Fatalf("first sight: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	saved, _ := os.ReadFile(path)
	other := newKey(t)
	for _, tc := range []struct {
		name   string
		log    *testLog
		proof  [][]byte
		reason string // RollbackError.Reason, or "key" for a KeyChangedError
	}{
		{"older copy (truncated)", newTestLog(t, key, "ward/agent.test", 0, 7), nil, "went backwards"},
		{"same size, other events", newTestLog(t, key, "ward/agent.test", 100, 10), nil, "forked"},
		{"larger but not an extension", newTestLog(t, key, "ward/agent.test", 100, 15), nil, "inconsistent"},
		{"another signing key", newTestLog(t, other, "ward/agent.test", 0, 12), nil, "key"},
		{"another log", newTestLog(t, key, "ward/elsewhere", 0, 12), nil, "other log"},
	} {
		l := tc.log
		pr := tc.proof
		if pr == nil {
			pr = l.proofFrom(10)
		}
		err := w.Advance(l.head(), &l.key.PublicKey, pr)
		var rb *RollbackError
		var kc *KeyChangedError
		switch {
		case tc.reason == "key" && !errors.As(err, &kc):
			t.Errorf("%s: %v, want a KeyChangedError", tc.name, err)
		case tc.reason != "key" && (!errors.As(err, &rb) || rb.Reason() != tc.reason):
			t.Errorf("%s: %v, want a RollbackError (%s)", tc.name, err, tc.reason)
		}
		if got := mem.Latest(); got == nil || got.Size != 10 {
			t.Fatalf("%s: the memory moved to %+v", tc.name, got)
		}
		if now, _ := os.ReadFile(path); string(now) != string(saved) {
			t.Fatalf("%s: the memory file changed", tc.name)
		}
	}
	// A wrong proof for a genuine extension is refused; the right one moves it.
	real.append(10, 5)
	if err := w.Advance(real.head(), &key.PublicKey, [][]byte{make([]byte, 32)}); err == nil {
		t.Fatal("a genuine extension with a bad proof was accepted")
	}
	if err := w.Advance(real.head(), &key.PublicKey, real.proofFrom(10)); err != nil {
		t.Fatalf("genuine extension: %v", err)
	}
	if err := w.Advance(real.head(), &key.PublicKey, nil); err != nil {
		t.Fatalf("the same head again: %v", err)
	}
	// A head that is not signed by the key given is refused.
	if err := w.Advance(newTestLog(t, key, "ward/agent.test", 0, 20).head(), &other.PublicKey, nil); err == nil {
		t.Fatal("a head with a bad signature was accepted")
	}
	again, err := OpenFileMemory(path)
	if err != nil || again.Latest() == nil || again.Latest().Size != 15 {
		t.Fatalf("reopened memory: %+v, %v", again.Latest(), err)
	}
}

// TestFileMemoryReadsAgentFiles: a file written by agents before the
// witness existed is read, and a file that does not verify is an error.
func TestFileMemoryReadsAgentFiles(t *testing.T) {
	key := newKey(t)
	cp := newTestLog(t, key, "ward/agent.test", 0, 4).head()
	cj, _ := Encode(cp)
	pemKey, _ := MarshalPublicKeyPEM(&key.PublicKey)
	old, _ := json.MarshalIndent(struct {
		Checkpoint   json.RawMessage `json:"checkpoint"`
		PublicKeyPEM string          `json:"public_key_pem"`
	}{cj, string(pemKey)}, "", "  ")
	dir := t.TempDir()
	path := filepath.Join(dir, "audit-checkpoint.json")
	os.WriteFile(path, old, 0o600)
	m, err := OpenFileMemory(path)
	if err != nil || m.Latest() == nil || m.Latest().Size != 4 {
		t.Fatalf("old agent file: %+v, %v", m, err)
	}
	for name, data := range map[string]string{
		"not JSON":        "junk",
		"empty":           `{"checkpoint":{}}`,
		"truncated":       string(old[:len(old)/2]),
		"signature wrong": string(must(json.Marshal(map[string]any{"checkpoint": json.RawMessage(cj), "public_key_pem": string(must(MarshalPublicKeyPEM(&newKey(t).PublicKey)))}))),
	} {
		p := filepath.Join(dir, "bad.json")
		os.WriteFile(p, []byte(data), 0o600)
		if _, err := OpenFileMemory(p); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
