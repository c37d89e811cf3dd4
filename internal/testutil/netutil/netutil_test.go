package netutil

import (
	"net"
	"testing"
)

func TestFreeLoopbackPorts(t *testing.T) {
	ports, err := FreeLoopbackPorts(3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p == 0 || seen[p] {
			t.Fatalf("ports %v: zero or repeated", ports)
		}
		seen[p] = true
	}
	addr := FreeLoopbackAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the free address %s cannot be listened on: %v", addr, err)
	}
	l.Close()
}

// TestFreeLoopbackPortsReserved: a port handed out is not handed out again
// while reserved, even to another call right after (the old helper closed
// its listener and the next port-0 listen could return the same port), and
// it is outside the range the kernel picks port-0 and source ports from.
func TestFreeLoopbackPortsReserved(t *testing.T) {
	lo, hi := portRange()
	seen := map[int]bool{}
	for range 200 {
		ports, err := FreeLoopbackPorts(2)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			if p < lo || p >= hi {
				t.Fatalf("port %d outside %d-%d", p, lo, hi-1)
			}
			seen[p] = true
		}
	}
	// A port this process reserved is refused to another reservation
	// (another test binary opening the same lock file gets the same answer
	// from flock).
	p := 0
	for q := range seen {
		p = q
		break
	}
	reserveMu.Lock()
	ok := reserve(lockDir(), p)
	reserveMu.Unlock()
	if ok {
		t.Fatalf("port %d reserved twice", p)
	}
}
