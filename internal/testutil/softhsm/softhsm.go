// Package softhsm gives tests a SoftHSM2 token store of their own: a
// temporary softhsm2.conf and token directory (SOFTHSM2_CONF), tokens
// created with softhsm2-util, and the module path. It skips the test when
// SoftHSM2 (Debian package softhsm2) is not installed, or fails it when
// CI=true: CI never skips silently.
//
// SoftHSM reads SOFTHSM2_CONF when the module is first initialised in a
// process, so a package uses one configuration for all its tests (Use,
// from TestMain or the first test) and gives every test its own token.
package softhsm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Module is where Debian's softhsm2 installs the PKCS#11 library.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

var (
	once    sync.Once
	confDir string
	setErr  error
)

func available() error {
	if _, err := os.Stat(Module); err != nil {
		return fmt.Errorf("SoftHSM2 is not installed (%s missing; apt-get install softhsm2)", Module)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("softhsm2-util is not installed (apt-get install softhsm2)")
	}
	return nil
}

// Use makes sure this process has a private SoftHSM2 configuration and
// returns the module path. It skips t when SoftHSM2 is missing (fails it
// under CI=true).
func Use(t testing.TB) string {
	t.Helper()
	if err := available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("softhsm: %v (CI=true: refusing to skip)", err)
		}
		t.Skipf("softhsm: %v", err)
	}
	once.Do(func() {
		dir, err := os.MkdirTemp("", "ward-softhsm-*")
		if err != nil {
			setErr = err
			return
		}
		tokens := filepath.Join(dir, "tokens")
		if err := os.Mkdir(tokens, 0o700); err != nil {
			setErr = err
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			setErr = err
			return
		}
		os.Setenv("SOFTHSM2_CONF", conf)
		confDir = dir
	})
	if setErr != nil {
		t.Fatalf("softhsm: preparing a configuration: %v", setErr)
	}
	return Module
}

// Cleanup removes the configuration and every token (call from TestMain
// after the tests ran).
func Cleanup() {
	if confDir != "" {
		os.RemoveAll(confDir)
	}
}

// NewToken initialises a fresh token labelled label with the given user
// PIN (and SO PIN "so-"+pin) and deletes it when t ends.
func NewToken(t testing.TB, label, pin string) {
	t.Helper()
	Use(t)
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token %s: %v\n%s", label, err, out)
	}
	t.Cleanup(func() { DeleteToken(label) })
}

// DeleteToken removes the token labelled label (its key objects with it),
// as if the HSM were lost. Close every hsm.Token first: SoftHSM keeps a
// token's objects in the memory of a process that has it open.
func DeleteToken(label string) error {
	out, err := exec.Command("softhsm2-util", "--delete-token", "--token", label).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Could not find") {
		return fmt.Errorf("softhsm2-util --delete-token %s: %v: %s", label, err, out)
	}
	return nil
}

// TokenDir is the directory holding every token's files (to scan them).
func TokenDir() string { return filepath.Join(confDir, "tokens") }
