package netns

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread inside the node's network namespace: a socket
// f creates (a dial, a listener, a capture) belongs to the namespace for
// its whole life, whichever thread uses it later.
func (nd *Node) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so discarded when the goroutine
		// ends) unless it returns to the original namespace.
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + nd.Name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", nd.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Dial connects to addr (TCP) from inside the node's namespace.
func (nd *Node) Dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := nd.Do(func() (err error) { c, err = net.Dial("tcp", addr); return })
	return c, err
}

// Flow is one direction of a TCP connection seen by a Capture.
type Flow struct {
	Src, Dst Endpoint
	// Payload is the direction's bytes in sequence order (retransmissions
	// and the duplicate copies of a loopback capture removed).
	Payload []byte
	// SYN is true when the capture saw the connection's first segment.
	SYN bool
}

type Endpoint struct {
	IP   [4]byte
	Port uint16
}

func (a Endpoint) String() string {
	return fmt.Sprintf("%d.%d.%d.%d:%d", a.IP[0], a.IP[1], a.IP[2], a.IP[3], a.Port)
}

type flowKey struct{ src, dst Endpoint }

type flowState struct {
	isn  uint32
	syn  bool
	segs map[uint32][]byte // by sequence number
}

// Capture records the IPv4 TCP segments of every interface of a
// namespace (an AF_PACKET socket, as tcpdump -i any would; Ethernet
// interfaces and TUN devices), for tests that must show what crosses a
// link.
type Capture struct {
	fd    int
	mu    sync.Mutex
	flows map[flowKey]*flowState
	done  chan struct{}
	hooks []func(ip []byte)
}

// OnIPv4 calls f with every IPv4 packet captured from now on (the IP
// header onwards; f must not keep it), for tests that look at more than
// TCP (UDP tunnels, markers anywhere in a frame).
func (c *Capture) OnIPv4(f func(ip []byte)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hooks = append(c.hooks, f)
}

// Capture starts capturing in the node's namespace until the test ends or
// Stop.
func (nd *Node) Capture(t testing.TB) *Capture {
	t.Helper()
	c := &Capture{flows: map[flowKey]*flowState{}, done: make(chan struct{})}
	err := nd.Do(func() (err error) {
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		t.Fatalf("capture in %s: %v", nd.Name, err)
	}
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	go c.run()
	t.Cleanup(c.Stop)
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Stop ends the capture (idempotent).
func (c *Capture) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}

func (c *Capture) run() {
	defer unix.Close(c.fd)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 14 {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Hatype == unix.ARPHRD_NONE {
			c.packet(buf[:n]) // a TUN device (WireGuard): IP packets, no link header
			continue
		}
		c.frame(buf[:n])
	}
}

// frame records one Ethernet frame carrying IPv4.
func (c *Capture) frame(b []byte) {
	if binary.BigEndian.Uint16(b[12:14]) != 0x0800 {
		return
	}
	c.packet(b[14:])
}

// packet records one IPv4 packet, and its segment if it is TCP.
func (c *Capture) packet(ip []byte) {
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return
	}
	c.mu.Lock()
	hooks := c.hooks
	c.mu.Unlock()
	for _, h := range hooks {
		h(ip)
	}
	if ip[9] != 6 {
		return
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total > len(ip) || ihl < 20 || total < ihl+20 {
		return
	}
	tcp := ip[ihl:total]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return
	}
	var k flowKey
	copy(k.src.IP[:], ip[12:16])
	copy(k.dst.IP[:], ip[16:20])
	k.src.Port = binary.BigEndian.Uint16(tcp[0:2])
	k.dst.Port = binary.BigEndian.Uint16(tcp[2:4])
	seq := binary.BigEndian.Uint32(tcp[4:8])
	syn := tcp[13]&0x02 != 0
	payload := tcp[off:]
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.flows[k]
	if f == nil || syn {
		// A SYN starts the flow over (a new connection on the same ports).
		f = &flowState{isn: seq, segs: map[uint32][]byte{}}
		c.flows[k] = f
	}
	if syn {
		f.syn, f.isn = true, seq+1
		return
	}
	if len(payload) == 0 {
		return
	}
	if _, dup := f.segs[seq]; !dup {
		f.segs[seq] = append([]byte(nil), payload...)
	}
}

// Flows returns every direction of every TCP connection captured so far,
// with its payload reassembled in sequence order.
func (c *Capture) Flows() []Flow {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Flow
	for k, f := range c.flows {
		seqs := make([]uint32, 0, len(f.segs))
		for s := range f.segs {
			seqs = append(seqs, s)
		}
		// Relative to the first byte (wrap-around safe).
		base := f.isn
		if !f.syn && len(seqs) > 0 {
			base = seqs[0]
			for _, s := range seqs {
				if s-base > 1<<31 {
					base = s
				}
			}
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i]-base < seqs[j]-base })
		var p []byte
		for _, s := range seqs {
			rel := int(s - base)
			seg := f.segs[s]
			switch {
			case rel > len(p):
				p = append(p, make([]byte, rel-len(p))...) // a gap: zero bytes (never a valid TLS record header)
				p = append(p, seg...)
			case rel+len(seg) > len(p):
				p = append(p, seg[len(p)-rel:]...)
			}
		}
		out = append(out, Flow{Src: k.src, Dst: k.dst, Payload: p, SYN: f.syn})
	}
	return out
}
