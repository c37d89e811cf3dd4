package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		before func(path string) // what sits at the path first
		mode   os.FileMode
	}{
		{"new file", func(string) {}, 0o600},
		{"replaces a 0666 file, keeps no mode of it", func(p string) { os.WriteFile(p, []byte("old"), 0o666); os.Chmod(p, 0o666) }, 0o600},
		{"public mode on request", func(string) {}, 0o644},
		{"replaces a planted symlink, not its target", func(p string) { os.Symlink(filepath.Join(dir, "target"), p) }, 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "target"), []byte("target"), 0o644)
			p := filepath.Join(dir, "f")
			os.Remove(p)
			tc.before(p)
			if err := Write(p, []byte("new"), tc.mode); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(p)
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != tc.mode {
				t.Fatalf("got %v, %v; want a regular file with mode %v", fi.Mode(), err, tc.mode)
			}
			if b, _ := os.ReadFile(p); string(b) != "new" {
				t.Fatalf("content %q", b)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "target")); string(b) != "target" {
				t.Fatalf("the symlink's target was written through: %q", b)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*")); len(left) != 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("a write into a missing directory succeeded")
	}
}
