package attest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Image identifies the program a process runs: the device and inode of
// the file its /proc/PID/exe names, and the process's start time. exec
// keeps the PID and the start time but changes the executable; a reused
// PID changes the start time.
type Image struct {
	Dev, Ino uint64
	// StartTime is /proc/PID/stat field 22 (clock ticks since boot).
	StartTime uint64
}

// IsZero reports whether no image was recorded.
func (i Image) IsZero() bool { return i == Image{} }

// String names the image for errors and logs.
func (i Image) String() string {
	return fmt.Sprintf("exe %d:%d started %d", i.Dev, i.Ino, i.StartTime)
}

// ErrImageChanged is wrapped by CheckImage when the process runs another
// program than the one recorded (it exec'd) or the PID now names another
// process.
var ErrImageChanged = errors.New("process image changed since it connected")

// ReadImage reads the image of process pid below procRoot ("/proc").
// Reading another user's /proc/PID/exe needs the ptrace read right (root,
// or CAP_SYS_PTRACE), as the unix attestor does anyway.
func ReadImage(procRoot string, pid int32) (Image, error) {
	if pid <= 0 {
		return Image{}, fmt.Errorf("no PID (peer in another PID namespace?)")
	}
	dir := filepath.Join(procRoot, strconv.Itoa(int(pid)))
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "exe"), &st); err != nil {
		return Image{}, fmt.Errorf("stat executable of pid %d: %w", pid, err)
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Image{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	start, err := ParseStartTime(stat)
	if err != nil {
		return Image{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return Image{Dev: uint64(st.Dev), Ino: st.Ino, StartTime: start}, nil
}

// CheckImage reports an error wrapping ErrImageChanged unless pid still
// runs image want. A zero want is an error: nothing was recorded to
// compare with.
func CheckImage(procRoot string, pid int32, want Image) error {
	if want.IsZero() {
		return fmt.Errorf("%w: pid %d: no image was recorded when it connected", ErrImageChanged, pid)
	}
	got, err := ReadImage(procRoot, pid)
	if err != nil {
		return fmt.Errorf("%w: %v (has it exited?)", ErrImageChanged, err)
	}
	if got != want {
		return fmt.Errorf("%w: pid %d connected running %s and now runs %s: it exec'd another program, or the PID was reused; a workload must connect after its last exec",
			ErrImageChanged, pid, want, got)
	}
	return nil
}

// ParseStartTime returns field 22 (starttime) of a /proc/PID/stat line.
// Field 2, the command name in parentheses, is chosen by the process and
// may hold spaces and ')', so fields are counted after the last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || !bytes.Contains(stat[:i], []byte("(")) {
		return 0, errors.New("process stat has no (comm) field")
	}
	fields := bytes.Fields(stat[i+1:])
	// fields[0] is field 3 (state); starttime is field 22.
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("process stat has %d fields after comm; want at least %d", len(fields), idx+1)
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("process stat: starttime %q is not a number", fields[idx])
	}
	return v, nil
}
