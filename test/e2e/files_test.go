package e2e

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileEncryptionAgainstTheAuthority encrypts files with data keys from
// the authority's KMS, rotates the KMS key, rewraps headers, re-encrypts,
// and checks that destroying the key version makes the data unrecoverable.
func TestFileEncryptionAgainstTheAuthority(t *testing.T) {
	dir := t.TempDir()
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	s.InitAndUnseal()
	a := s.Addr
	MustWard(t, a, "", "key", "create", "tenant-a/files", "--classification", "confidential")

	data := make([]byte, 3<<20+123)
	rand.Read(data)
	in := filepath.Join(dir, "in.bin")
	os.WriteFile(in, data, 0o600)
	enc := filepath.Join(dir, "in.bin.ward")
	MustWard(t, a, "", "encrypt", "--key", "tenant-a/files", "--classification", "confidential", "--meta", "owner=payments", "-i", in, "-o", enc)
	raw, _ := os.ReadFile(enc)
	if bytes.Contains(raw, data[:64]) {
		t.Fatal("ciphertext contains plaintext")
	}
	info := MustWard(t, a, "", "inspect", enc)
	for _, w := range []string{"tenant-a/files", "confidential", "owner"} {
		if !strings.Contains(info, w) {
			t.Errorf("inspect lacks %q:\n%s", w, info)
		}
	}
	MustWard(t, a, "", "verify", enc)
	out := filepath.Join(dir, "out.bin")
	MustWard(t, a, "", "decrypt", "-i", enc, "-o", out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("round trip through the authority differs")
	}

	// Rotate the KMS key, rewrap the header only: data still decrypts and
	// the header now names version 2.
	MustWard(t, a, "", "key", "rotate", "tenant-a/files")
	MustWard(t, a, "", "rewrap", enc)
	if info := MustWard(t, a, "", "inspect", enc); !strings.Contains(info, "2") {
		t.Fatalf("after rewrap:\n%s", info)
	}
	os.Remove(out)
	MustWard(t, a, "", "decrypt", "-i", enc, "-o", out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("round trip after rewrap differs")
	}
	MustWard(t, a, "", "reencrypt", enc)
	MustWard(t, a, "", "verify", enc)

	// A file left under version 1 becomes unrecoverable once v1 is destroyed.
	old := filepath.Join(dir, "old.ward")
	MustWard(t, a, "", "key", "create", "tenant-a/shred", "--classification", "internal")
	MustWard(t, a, "", "encrypt", "--key", "tenant-a/shred", "-i", in, "-o", old)
	MustWard(t, a, "", "key", "rotate", "tenant-a/shred")
	MustWard(t, a, "", "key", "destroy", "tenant-a/shred", "--version", "1", "--yes")
	r := Ward(t, a, "", "decrypt", "-i", old, "-o", filepath.Join(dir, "never.bin"))
	if r.Code == 0 || !strings.Contains(r.Stderr, "destroyed") {
		t.Fatalf("decrypt after destroy: %d %q", r.Code, r.Stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "never.bin")); err == nil {
		t.Fatal("a failed decrypt left an output file")
	}
}
