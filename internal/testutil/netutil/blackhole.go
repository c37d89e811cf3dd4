package netutil

import (
	"net"
	"sync"
	"testing"
)

// Blackhole forwards loopback TCP connections to a target and can cut the
// link without closing anything: while cut, no byte moves in either
// direction (connections stay open, new ones are accepted and held), as
// when a network path silently drops packets. Heal lets the held bytes
// through again, in order.
type Blackhole struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	cut   bool
	conns map[net.Conn]struct{}
	done  bool
}

// NewBlackhole listens on a loopback port and forwards to target (host:port)
// until the test ends.
func NewBlackhole(t testing.TB, target string) *Blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Blackhole{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	b.cond = sync.NewCond(&b.mu)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

// Addr is the address to use instead of the target.
func (b *Blackhole) Addr() string { return b.ln.Addr().String() }

// Cut stops every byte from moving until Heal.
func (b *Blackhole) Cut() {
	b.mu.Lock()
	b.cut = true
	b.mu.Unlock()
}

// Heal lets bytes move again.
func (b *Blackhole) Heal() {
	b.mu.Lock()
	b.cut = false
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *Blackhole) close() {
	b.ln.Close()
	b.mu.Lock()
	b.done, b.cut = true, false
	for c := range b.conns {
		c.Close()
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

// wait blocks while the link is cut; false once the blackhole is closed.
func (b *Blackhole) wait() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.cut && !b.done {
		b.cond.Wait()
	}
	return !b.done
}

func (b *Blackhole) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		c.Close()
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Blackhole) serve() {
	for {
		in, err := b.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			if !b.track(in) || !b.wait() {
				in.Close()
				return
			}
			out, err := net.Dial("tcp", b.target)
			if err != nil {
				in.Close()
				return
			}
			if !b.track(out) {
				in.Close()
				return
			}
			go b.pipe(out, in)
			b.pipe(in, out)
		}()
	}
}

// pipe copies src to dst, holding each chunk while the link is cut.
func (b *Blackhole) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !b.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // io.EOF or a closed connection
			return
		}
	}
}
