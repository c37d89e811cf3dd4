// Package netutil has the network helpers tests share.
package netutil

import (
	"fmt"
	"net"
	"testing"
)

// FreeLoopbackPorts returns n distinct 127.0.0.1 TCP ports nobody listens on
// right now, for a process or config that must be told its ports up front (a
// listener the test opens itself should use port 0 instead). Another process
// may take a port before it is used.
func FreeLoopbackPorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreeLoopbackAddr is one free port as a 127.0.0.1 host:port (see
// FreeLoopbackPorts); it fails the test if there is none.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	ports, err := FreeLoopbackPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}
