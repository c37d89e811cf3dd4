// Package netutil has the network helpers tests share.
package netutil

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Ports handed out by FreeLoopbackPorts cannot clash, even when several test
// binaries run at once (go test -p 2 ./...) on a loaded machine:
//
//   - they come from below the kernel's ephemeral range
//     (net.ipv4.ip_local_port_range), so no listener on port 0 and no
//     outgoing connection's source port can take one between the moment it
//     is picked and the moment the process told about it binds it;
//   - each is reserved with an flock on a file under
//     $TMPDIR/ward-test-ports, held by this test binary, so no other test
//     binary (nor a later call in this one) hands out the same port while it
//     is in use;
//   - a port someone already listens on is skipped.
//
// The old way (listen on 127.0.0.1:0, close, hand the port out) raced with
// every other port-0 listener and source port on the machine, and two calls
// in a row could return the same port.

var (
	reserveMu sync.Mutex
	reserved  = map[int]*os.File{} // port -> its held lock file (nil: no lock directory)
)

// portRange is the range ports are picked from: [lo, hi).
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return
	}
	elo, err1 := strconv.Atoi(f[0])
	ehi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return
	}
	switch {
	case elo-10000 >= 2000: // below the ephemeral range
		return max(10000, elo-12768), elo
	case 65536-(ehi+1) >= 2000: // above it
		return ehi + 1, 65536
	}
	return
}

func lockDir() string {
	d := filepath.Join(os.TempDir(), "ward-test-ports")
	if err := os.Mkdir(d, 0o1777); err == nil {
		os.Chmod(d, 0o1777) // every uid's tests share it (umask)
	}
	return d
}

// reserve takes port p for this process, or reports false if another
// process (or an earlier call) holds it or something listens on it.
// reserveMu is held.
func reserve(dir string, p int) bool {
	if _, ok := reserved[p]; ok {
		return false
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_RDONLY|os.O_CREATE, 0o644)
	if err == nil {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			return false
		}
	} else {
		f = nil // no shared lock directory: reserve in this process only
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		if f != nil {
			f.Close()
		}
		return false
	}
	l.Close()
	reserved[p] = f
	return true
}

// release gives port p back (see FreeLoopbackAddr).
func release(p int) {
	reserveMu.Lock()
	defer reserveMu.Unlock()
	if f, ok := reserved[p]; ok {
		if f != nil {
			f.Close()
		}
		delete(reserved, p)
	}
}

// FreeLoopbackPorts returns n distinct 127.0.0.1 TCP ports nobody listens on,
// for a process or config that must be told its ports up front (a listener
// the test opens itself should use port 0 instead). The ports stay reserved
// for this test binary until it exits: no other call, here or in another
// test binary using this package, returns them, and they are outside the
// range the kernel picks port-0 and source ports from (see above).
func FreeLoopbackPorts(n int) ([]int, error) {
	reserveMu.Lock()
	defer reserveMu.Unlock()
	lo, hi := portRange()
	dir := lockDir()
	size := hi - lo
	start := rand.IntN(size)
	var ports []int
	for i := 0; i < size && len(ports) < n; i++ {
		p := lo + (start+i)%size
		if reserve(dir, p) {
			ports = append(ports, p)
		}
	}
	if len(ports) < n {
		for _, p := range ports {
			if f := reserved[p]; f != nil {
				f.Close()
			}
			delete(reserved, p)
		}
		return nil, errors.New("netutil: no free loopback port left in " + strconv.Itoa(lo) + "-" + strconv.Itoa(hi-1))
	}
	return ports, nil
}

// FreeLoopbackAddr is one free port as a 127.0.0.1 host:port (see
// FreeLoopbackPorts); it fails the test if there is none. The port is
// reserved until the test's cleanups have run (its reservation is released
// by a cleanup registered now, so it runs after those registered later,
// such as stopping the process that listens on it).
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	ports, err := FreeLoopbackPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { release(ports[0]) })
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}

// TCPPair is a connected pair of loopback TCP connections (dialer,
// accepted), both closed by the test's cleanup.
func TCPPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// Flood writes to conn until a write fails (the peer never reading fills
// the socket buffers, then blocks the write until conn is closed).
func Flood(conn net.Conn) {
	chunk := make([]byte, 64<<10)
	for {
		if _, err := conn.Write(chunk); err != nil {
			return
		}
	}
}
