package boltstore

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournalPlantedFilesRefused (red team): whoever can write the
// directory of ward.db (a storage.bbolt.path in a shared directory) plants
// a journal file before the authority starts: a symbolic link to another
// file (ward would overwrite it with its header, or read it), a hard link,
// or a file of their own (they could read every frame and forge frames).
// Open refuses each, naming the file, and leaves the target untouched.
func TestJournalPlantedFilesRefused(t *testing.T) {
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "precious")
	content := bytes.Repeat([]byte("precious data\n"), 100)
	must(t, os.WriteFile(victim, content, 0o644))
	empty := filepath.Join(victimDir, "empty") // read as a journal not yet written to
	must(t, os.WriteFile(empty, nil, 0o644))
	absent := filepath.Join(victimDir, "absent")
	for name, plant := range map[string]func(t *testing.T, journal string){
		"symlink":         func(t *testing.T, journal string) { must(t, os.Symlink(victim, journal)) },
		"symlink-empty":   func(t *testing.T, journal string) { must(t, os.Symlink(empty, journal)) },
		"symlink-dangles": func(t *testing.T, journal string) { must(t, os.Symlink(absent, journal)) },
		"hardlink-empty":  func(t *testing.T, journal string) { must(t, os.Link(empty, journal)) },
		"other-user": func(t *testing.T, journal string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to make a file of another user")
			}
			must(t, os.WriteFile(journal, nil, 0o666))
			must(t, os.Chown(journal, 65534, 65534))
		},
	} {
		for _, journal := range []bool{true, false} {
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "ward.db")
				s, err := Open(path)
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				jpath := journalPaths(path)[1]
				plant(t, jpath)
				var opts []Option
				if journal {
					opts = append(opts, WithJournal())
				}
				s, err = Open(path, opts...)
				if err == nil {
					s.Close()
					t.Fatalf("Open (journal %v) with a planted %s as its journal succeeded", journal, name)
				}
				if !strings.Contains(err.Error(), jpath) || !strings.Contains(err.Error(), "remove it") {
					t.Errorf("the refusal does not name the file and what to do: %v", err)
				}
				if b, err := os.ReadFile(victim); err != nil || !bytes.Equal(b, content) {
					t.Fatalf("the file the planted journal pointed at changed (%v)", err)
				}
				if b, err := os.ReadFile(empty); err != nil || len(b) != 0 {
					t.Fatalf("the empty file the planted journal pointed at was written: %d bytes, %v", len(b), err)
				}
				if _, err := os.Lstat(absent); err == nil {
					t.Fatal("the planted link's target was created")
				}
				if _, err := os.Lstat(jpath); err != nil {
					t.Errorf("the planted file was removed: %v", err)
				}
			})
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
