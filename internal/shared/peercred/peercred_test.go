package peercred

import (
	"io"
	"net"
	"testing"
)

// TestReadRejectsTCP: peer credentials exist only for unix sockets.
func TestReadRejectsTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := Read(conn); err == nil {
		t.Fatal("TCP connection accepted as a unix peer")
	}
}
