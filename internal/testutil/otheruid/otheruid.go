// Package otheruid has one job: running part of a test as another local
// user (by default uid 65534, "nobody"), for the attack tests that check
// what a second uid on the machine can reach. Only root can switch uid:
// Available fails the test under CI=true (CI runs as root) and otherwise
// says no, so the caller skips.
package otheruid

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Nobody is the uid (and gid) the attack tests run as.
const Nobody = 65534

// Available reports whether this process can run commands as another uid
// (it is root). Under CI=true a non-root run fails the test: there the
// attack must run, not be skipped.
func Available(t testing.TB) bool {
	t.Helper()
	if os.Geteuid() == 0 {
		return true
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: this attack needs root to run a second uid")
	}
	return false
}

// Require skips the test unless Available.
func Require(t testing.TB) {
	t.Helper()
	if !Available(t) {
		t.Skip("needs root to run a process as another uid")
	}
}

// PublicDir is a new directory every local user may enter (mode 0755),
// removed when the test ends (t.TempDir's parents are closed to others).
func PublicDir(t testing.TB, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// CopyTestBinary copies the running test binary to dir/name, mode 0755
// (the go build cache is not open to other users), and returns its path.
func CopyTestBinary(t testing.TB, dir, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(dir, name)
	out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// Command is exec.Command run as uid (and gid uid).
func Command(uid uint32, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	return cmd
}

// Run runs bin as uid in /, with only HOME=/, PATH and env in its
// environment (a test binary whose init calls Child on one of env's variables),
// and returns its trimmed output; the test fails if it does not exit 0.
func Run(t testing.TB, bin string, uid uint32, env ...string) string {
	t.Helper()
	cmd := Command(uid, bin)
	cmd.Env = append([]string{"HOME=/", "PATH=/usr/bin:/bin"}, env...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s as uid %d: %v\n%s", filepath.Base(bin), uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// Child, called from a test package's init, makes the test binary the
// child Run starts: when env is set, it prints do(env's value) and exits 0
// before any test runs.
func Child(env string, do func(string) string) {
	v := os.Getenv(env)
	if v == "" {
		return
	}
	fmt.Println(do(v))
	os.Exit(0)
}
