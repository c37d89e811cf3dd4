package audit

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/transparency-dev/merkle/compact"
)

// The audit log's own RFC 6962 hashes are byte for byte those of
// transparency-dev/merkle's hasher (leaves of every length, nodes, whole
// trees), with fewer allocations.
func TestHashesAreRFC6962s(t *testing.T) {
	theirs := &compact.RangeFactory{Hash: th.HashChildren}
	a, b := factory.NewEmptyRange(0), theirs.NewEmptyRange(0)
	for n := range 600 {
		leaf := make([]byte, n*7%1500)
		rand.Read(leaf)
		got, want := leafHash(leaf), th.HashLeaf(leaf)
		if !bytes.Equal(got, want) {
			t.Fatalf("leaf of %d bytes: hash %x, want %x", len(leaf), got, want)
		}
		if app := appendLeafHash([]byte("x"), leaf); !bytes.Equal(app[1:], want) || app[0] != 'x' {
			t.Fatalf("appendLeafHash did not append the hash")
		}
		if err := a.Append(got, nil); err != nil {
			t.Fatal(err)
		}
		if err := b.Append(want, nil); err != nil {
			t.Fatal(err)
		}
		ra, err := a.GetRootHash(nil)
		if err != nil {
			t.Fatal(err)
		}
		rb, _ := b.GetRootHash(nil)
		if !bytes.Equal(ra, rb) {
			t.Fatalf("root at size %d differs", n+1)
		}
	}
	l, r := th.HashLeaf([]byte("l")), th.HashLeaf([]byte("r"))
	if !bytes.Equal(hashChildren(l, r), th.HashChildren(l, r)) {
		t.Fatal("node hash differs")
	}
	if odd := []byte("short"); !bytes.Equal(hashChildren(odd, r), th.HashChildren(odd, r)) {
		t.Fatal("node hash of a short child differs")
	}
	leaf := make([]byte, 300)
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = appendLeafHash(buf[:0], leaf) }); n > 0 {
		t.Errorf("appendLeafHash into room: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = hashChildren(l, r) }); n > 1 {
		t.Errorf("hashChildren: %v allocations, want 1", n)
	}
}
