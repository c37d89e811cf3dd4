package cli

import (
	"net"
	"path/filepath"
	"slices"
	"testing"
)

func TestUnixPathsOfAFailoverAddress(t *testing.T) {
	got := unixPaths("unix:///a/admin.sock, unix:///b/admin.sock,ward-1:8443")
	if !slices.Equal(got, []string{"/a/admin.sock", "/b/admin.sock"}) {
		t.Fatalf("unixPaths: %v", got)
	}
}

// Each connection of a failover client is judged by the directory of the
// socket it reached, not by the first socket's.
func TestAdminPeerJudgesEachSocket(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	ln, err := net.Listen("unix", b)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	conn, err := net.Dial("unix", b)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parent := &adminPeer{path: a, paths: []string{a, b}, self: 12345, extraUID: -1}
	if got := parent.forConn(conn).path; got != b {
		t.Fatalf("connection to %s judged as %s", b, got)
	}
	// A refusal by that socket's check is what the failover client's
	// check reports (withClient prints it instead of "cannot reach").
	if parent.forConn(conn).parent != parent {
		t.Fatal("the per-socket check does not report to the failover client's check")
	}
}
