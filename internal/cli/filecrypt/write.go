package filecrypt

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultMode is the mode of every file ward writes (plaintext and
// ciphertext alike) unless the caller asks for another with --mode. An
// existing file at the output path never lends its mode to the output.
const DefaultMode fs.FileMode = 0o600

// ParseMode parses a --mode value: octal permission bits such as 0600,
// 640 or 0o644. Special bits (setuid, setgid, sticky) and world-writable
// modes are refused: nothing ward writes should be writable by every
// local user.
func ParseMode(s string) (fs.FileMode, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0o"), "0O")
	n, err := strconv.ParseUint(t, 8, 32)
	if t == "" || err != nil || n > 0o7777 {
		return 0, fmt.Errorf("--mode %q: give octal permission bits such as 0600 or 0640", s)
	}
	if n&^0o777 != 0 {
		return 0, fmt.Errorf("--mode %q: setuid, setgid and sticky bits are not allowed on output files: give permission bits such as 0600 or 0640", s)
	}
	if n&0o002 != 0 {
		return 0, fmt.Errorf("--mode %q is world-writable: refusing (any local user could replace the output); use 0600, 0640 or 0644", s)
	}
	if n&0o400 == 0 {
		return 0, fmt.Errorf("--mode %q leaves the file unreadable by its owner: use 0600, 0640 or 0644", s)
	}
	return fs.FileMode(n), nil
}

// DirModeFor gives the mode of directories created for files of mode m:
// every class that may read the files may also enter the directory.
func DirModeFor(m fs.FileMode) fs.FileMode {
	d := m.Perm() | 0o700
	d |= (d & 0o044) >> 2 // r → x for group and others
	return d &^ 0o022     // never group- or world-writable
}

// ErrSymlink is returned (wrapped) when an output path or one of the
// directories under an output tree is a symbolic link.
var ErrSymlink = errors.New("is a symbolic link")

// AtomicWrite writes path through fill into a new temporary file in the
// same directory (created O_EXCL, mode 0600, then set to exactly mode),
// syncs it and renames it over path. If fill fails nothing is left behind
// and an existing path is untouched.
//
// The output never follows or inherits from what is at path: a symbolic
// link there is refused (ErrSymlink; rename would replace, not follow,
// it even if one appeared after the check), and an existing regular file
// is replaced by a new one of mode mode, whatever its own mode was. The
// directory part of path is resolved as usual: it is the caller's choice.
func AtomicWrite(path string, mode fs.FileMode, fill func(f *os.File) error) error {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("opening the directory of %s: %w", path, err)
	}
	defer root.Close()
	return WriteInRoot(root, filepath.Base(path), mode, fill)
}

// ReplaceInPlace rewrites the existing regular file path (rewrap,
// reencrypt) atomically, keeping its mode. A symbolic link is refused
// rather than replaced by a regular file or written through.
func ReplaceInPlace(path string, fill func(f *os.File) error) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s %w: refusing to replace it in place; give the file it points to", path, ErrSymlink)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return AtomicWrite(path, st.Mode().Perm(), fill)
}

// OpenNoFollow opens path for reading, failing if its last component is a
// symbolic link (for files found by walking a directory, where a link
// could have been planted after the walk).
func OpenNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s %w: not followed", path, ErrSymlink)
		}
		return nil, err
	}
	return f, nil
}

// WriteInRoot writes name (a relative path, possibly with directories)
// under root atomically, like AtomicWrite. Missing directories are
// created (mode derived from mode: 0600 → 0700, 0644 → 0755). Every
// existing component of name is checked with Lstat and a symbolic link
// is refused with an error naming it; the os.Root methods additionally
// make it impossible for a link planted after the check to lead outside
// root. Nothing is written outside root.
func WriteInRoot(root *os.Root, name string, mode fs.FileMode, fill func(f *os.File) error) (err error) {
	name = filepath.Clean(name)
	full := filepath.Join(root.Name(), name)
	if !filepath.IsLocal(name) || name == "." {
		return fmt.Errorf("%s: output name must stay inside %s", name, root.Name())
	}
	if err := checkNoSymlinks(root, name); err != nil {
		return err
	}
	dir := filepath.Dir(name)
	if dir != "." {
		if err := root.MkdirAll(dir, DirModeFor(mode)); err != nil {
			return fmt.Errorf("creating the directory of %s: %w", full, err)
		}
	}
	var sfx [8]byte
	rand.Read(sfx[:])
	tmpName := filepath.Join(dir, tmpPrefix+hex.EncodeToString(sfx[:]))
	tmp, err := root.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("creating a temporary file next to %s: %w", full, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			root.Remove(tmpName)
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	// The mode only once the content is complete: while fill runs (a
	// decryption that may still fail) no other uid can read it, whatever
	// mode the output gets. fchmod on our own descriptor: no race.
	if err := tmp.Chmod(mode.Perm()); err != nil {
		return fmt.Errorf("setting the mode of the temporary file for %s: %w", full, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing the temporary file for %s: %w", full, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing the temporary file for %s: %w", full, err)
	}
	// rename(2) replaces a symbolic link that may have appeared at name
	// since the check; it never writes through it.
	if err := root.Rename(tmpName, name); err != nil {
		return fmt.Errorf("replacing %s: %w", full, err)
	}
	if d, err := root.Open(dir); err == nil {
		d.Sync() // best effort: make the rename durable
		d.Close()
	}
	return nil
}

// checkNoSymlinks refuses a symbolic link at any existing component of
// name under root, and a final component that is not a regular file.
func checkNoSymlinks(root *os.Root, name string) error {
	parts := strings.Split(name, string(filepath.Separator))
	for i := range parts {
		p := filepath.Join(parts[:i+1]...)
		st, err := root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // the rest will be created
		}
		if err != nil {
			return fmt.Errorf("checking %s: %w", filepath.Join(root.Name(), p), err)
		}
		last := i == len(parts)-1
		switch {
		case st.Mode()&fs.ModeSymlink != 0 && last:
			return fmt.Errorf("output %s %w: refusing to write through or replace it (another user may have planted it); remove it or choose another output path", filepath.Join(root.Name(), p), ErrSymlink)
		case st.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("output directory %s %w: refusing to write under it (it could lead outside %s); remove it or choose another output directory", filepath.Join(root.Name(), p), ErrSymlink, root.Name())
		case !last && !st.IsDir():
			return fmt.Errorf("%s is not a directory", filepath.Join(root.Name(), p))
		case last && st.IsDir():
			return fmt.Errorf("%s is a directory", filepath.Join(root.Name(), p))
		case last && !st.Mode().IsRegular():
			return fmt.Errorf("output %s is not a regular file (%v): refusing to replace it", filepath.Join(root.Name(), p), st.Mode().Type())
		}
	}
	return nil
}
