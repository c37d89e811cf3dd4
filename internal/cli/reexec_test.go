// Re-exec tests: the test binary runs itself as `ward` in a child process
// (TestReexecWard calls Main), so a test sees what a user would: signals,
// exit codes, stdout and stderr, without building the binary (test/e2e builds
// and drives the real binary; runWard in files_test.go runs the command tree
// in-process). TestFakeAuthorityHelper (operator_test.go) re-execs the same
// way to run a fake authority as another uid. docs/testing.md names the
// three kinds of whole-path tests.
package cli

import (
	"os"
	"os/exec"
	"testing"

	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// reexecEnv in a child's environment makes TestReexecWard run Main.
const reexecEnv = "WARD_REEXEC_WARD=1"

// TestReexecWard is `ward` when the test binary runs itself as a child
// (startWard); run directly it skips.
func TestReexecWard(t *testing.T) {
	if os.Getenv("WARD_REEXEC_WARD") != "1" {
		t.Skip("re-exec helper: the child process of startWard")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(Main(args))
}

// wardProc runs `ward args...` as a real child process.
type wardProc struct {
	cmd  *exec.Cmd
	out  syncbuf.Buffer // stdout and stderr
	done chan error
}

func (w *wardProc) output() string { return w.out.String() }

func startWard(t *testing.T, args ...string) *wardProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	w := &wardProc{done: make(chan error, 1)}
	w.cmd = exec.Command(exe, append([]string{"-test.run=^TestReexecWard$", "--"}, args...)...)
	w.cmd.Env = append(os.Environ(), reexecEnv)
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		<-w.done
	})
	return w
}

func mustExe(t *testing.T) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}
