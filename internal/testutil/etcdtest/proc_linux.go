package etcdtest

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill etcd if the test binary dies first.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
