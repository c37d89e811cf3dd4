package filecrypt

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// encrypted makes a ciphertext file in dir and returns its path.
func encrypted(t *testing.T, r *Runner, keyName, dir string, pt []byte) string {
	t.Helper()
	src, enc := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward")
	write(t, src, pt)
	if _, err := r.EncryptFile(bg, enc, src, keyName); err != nil {
		t.Fatal(err)
	}
	return enc
}

// The attack: another user plants a symbolic link at the path the victim
// will decrypt to, pointing at a file the attacker can read (0644). The
// old code followed the link's mode and gave the plaintext 0644. Now the
// output is refused and the target is untouched, content and mode.
func TestOutputRefusesPlantedSymlink(t *testing.T) {
	r, l, dir := setup(t)
	enc := encrypted(t, r, l.KeyName(), dir, []byte("top secret"))
	elsewhere := filepath.Join(t.TempDir(), "attacker-readable")
	if err := os.WriteFile(elsewhere, []byte("bait"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(elsewhere, 0o644)
	out := filepath.Join(dir, "report.txt")
	if err := os.Symlink(elsewhere, out); err != nil {
		t.Fatal(err)
	}
	_, err := r.DecryptFile(bg, out, enc)
	if !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), out) {
		t.Fatalf("decrypt to a planted symlink: %v", err)
	}
	if b, _ := os.ReadFile(elsewhere); string(b) != "bait" {
		t.Fatalf("link target written: %q", b)
	}
	if st, _ := os.Stat(elsewhere); st.Mode().Perm() != 0o644 {
		t.Fatalf("link target mode changed: %v", st.Mode())
	}
	if st, err := os.Lstat(out); err != nil || st.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("the planted link was changed: %v %v", st, err)
	}
	if got := strings.Join(listDir(t, dir), ","); got != "report.txt,src,src.ward" {
		t.Fatalf("left behind: %s", got)
	}
	// Encrypting to a link is refused the same way.
	if _, err := r.EncryptFile(bg, out, filepath.Join(dir, "src"), l.KeyName()); !errors.Is(err, ErrSymlink) {
		t.Fatalf("encrypt to a planted symlink: %v", err)
	}
}

// The attack: a planted 0666 file at the output path. The old code kept
// its mode, so the plaintext was world-readable and -writable. Now the
// output is a new file of mode 0600 (or Runner.Mode), owned by us.
func TestOutputIgnoresPlantedMode(t *testing.T) {
	r, l, dir := setup(t)
	enc := encrypted(t, r, l.KeyName(), dir, []byte("top secret"))
	out := filepath.Join(dir, "report.txt")
	os.WriteFile(out, []byte("planted"), 0o666)
	if err := os.Chmod(out, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DecryptFile(bg, out, enc); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(out)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("plaintext: %v %v", st.Mode(), err)
	}
	if b, _ := os.ReadFile(out); string(b) != "top secret" {
		t.Fatalf("plaintext %q", b)
	}
	r.Mode = 0o640
	if _, err := r.DecryptFile(bg, out, enc); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o640 {
		t.Fatalf("explicit mode: %v", st.Mode())
	}
}

// The attack in directory mode: a subdirectory of the output tree is a
// link to a directory outside it. Nothing is written outside, the error
// names the link; a link to a directory inside the tree is refused too.
func TestWriteInRootRefusesSymlinkedDirs(t *testing.T) {
	outside := t.TempDir()
	out := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(out, "sub")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(out, "real"), 0o700)
	if err := os.Symlink("real", filepath.Join(out, "inner")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(out)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	fill := func(f *os.File) error { _, err := f.Write([]byte("plaintext")); return err }
	for _, name := range []string{"sub/x", "sub/deeper/x", "inner/x", "sub"} {
		err := WriteInRoot(root, name, 0o600, fill)
		if !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), filepath.Join(out, strings.Split(name, "/")[0])) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"../x", "/abs"} {
		if err := WriteInRoot(root, name, 0o600, fill); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if got := listDir(t, outside); len(got) != 0 {
		t.Fatalf("written outside the tree: %v", got)
	}
	if got := listDir(t, filepath.Join(out, "real")); len(got) != 0 {
		t.Fatalf("written through an inner link: %v", got)
	}
	// A normal nested write creates directories with a mode derived from
	// the file's.
	if err := WriteInRoot(root, "a/b/c", 0o640, fill); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(out, "a", "b")); st.Mode().Perm() != 0o750 {
		t.Fatalf("dir mode %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(out, "a", "b", "c")); st.Mode().Perm() != 0o640 {
		t.Fatalf("file mode %v", st.Mode())
	}
}

// In-place operations refuse a symbolic link instead of replacing it by a
// regular file or writing through it, and keep a regular file's mode.
func TestInPlaceRefusesSymlink(t *testing.T) {
	r, l, dir := setup(t)
	enc := encrypted(t, r, l.KeyName(), dir, []byte("data"))
	os.Chmod(enc, 0o640)
	link := filepath.Join(dir, "link.ward")
	os.Symlink(enc, link)
	before, _ := os.ReadFile(enc)
	l.Rotate()
	if _, _, err := r.Rewrap(bg, link); !errors.Is(err, ErrSymlink) {
		t.Fatalf("rewrap through a link: %v", err)
	}
	if _, err := r.Reencrypt(bg, link, ""); !errors.Is(err, ErrSymlink) {
		t.Fatalf("reencrypt through a link: %v", err)
	}
	if after, _ := os.ReadFile(enc); !bytes.Equal(before, after) {
		t.Fatal("link target changed")
	}
	if changed, _, err := r.Rewrap(bg, enc); err != nil || !changed {
		t.Fatalf("rewrap: %v %v", changed, err)
	}
	if st, _ := os.Stat(enc); st.Mode().Perm() != 0o640 {
		t.Fatalf("in-place mode %v", st.Mode())
	}
	if _, err := OpenNoFollow(link); !errors.Is(err, ErrSymlink) {
		t.Fatalf("OpenNoFollow: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]fs.FileMode{"0600": 0o600, "600": 0o600, "0o640": 0o640, "0644": 0o644, "0400": 0o400, "0750": 0o750} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x", "0888", "0666", "0602", "0777", "4600", "1600", "-600", "0200", "010000"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestDirModeFor(t *testing.T) {
	for m, want := range map[fs.FileMode]fs.FileMode{0o600: 0o700, 0o640: 0o750, 0o644: 0o755, 0o660: 0o750, 0o400: 0o700} {
		if got := DirModeFor(m); got != want {
			t.Errorf("%o: %o, want %o", m, got, want)
		}
	}
}

// ParseMode never lets through a mode with bits outside 0777, a
// world-writable mode, or one the owner cannot read.
func FuzzParseMode(f *testing.F) {
	for _, s := range []string{"0600", "644", "0o640", "0666", "4755", "", "0x1ff", "  0600 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMode(s)
		if err != nil {
			return
		}
		if m&^0o777 != 0 || m&0o002 != 0 || m&0o400 == 0 {
			t.Fatalf("ParseMode(%q) = %o", s, m)
		}
	})
}

// TestTempFileUnreadableWhileFilled: an output of mode 0644 (readable by
// other uids) is 0600 while it is being written (a decryption that may
// still fail half-way), and gets its mode only when complete; a fill that
// fails leaves nothing.
func TestTempFileUnreadableWhileFilled(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	err := AtomicWrite(out, 0o644, func(f *os.File) error {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("the temporary file is %v while it is filled, want 0600", st.Mode().Perm())
		}
		_, err = f.WriteString("plaintext")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o644 {
		t.Fatalf("output mode %v, want 0644", st.Mode().Perm())
	}
	if err := AtomicWrite(filepath.Join(dir, "bad"), 0o644, func(*os.File) error { return errors.New("segment 400 failed") }); err == nil {
		t.Fatal("a failed fill succeeded")
	}
	if got := strings.Join(listDir(t, dir), ","); got != "out" {
		t.Fatalf("left behind: %s", got)
	}
}
