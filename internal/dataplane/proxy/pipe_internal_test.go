package proxy

import (
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
)

// pipeUnderTest runs pipe between a (the connecting side's proxy end) and
// b (the other side's) and returns the far ends (client, server) and
// pipe's result.
func pipeUnderTest(t *testing.T, idle time.Duration) (client, server net.Conn, c *connState, done <-chan error) {
	t.Helper()
	client, a := netutil.TCPPair(t)
	b, server := netutil.TCPPair(t)
	c = newConnState("test", true, a)
	errc := make(chan error, 1)
	go func() { errc <- pipe(c, a, b, idle) }()
	return client, server, c, errc
}

// TestPipeIdleCountsBothDirections: each direction's watch looks at both
// byte counters (conn.go), so traffic that only flows server->client must
// keep the connection open (the client->server Read times out all along),
// and once it stops the connection is closed as idle.
func TestPipeIdleCountsBothDirections(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server, c, done := pipeUnderTest(t, idle)
	go io.Copy(io.Discard, client)
	// Server-only traffic for 6 idle periods, a byte every idle/4.
	for i := 0; i < 24; i++ {
		if _, err := server.Write([]byte{'x'}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		select {
		case err := <-done:
			t.Fatalf("pipe ended while the server was sending: %v", err)
		case <-time.After(idle / 4):
		}
	}
	if n := c.bytesOut.Load(); n == 0 {
		t.Fatal("no byte counted server->client")
	}
	select {
	case err := <-done:
		if !errors.Is(err, errIdle) {
			t.Fatalf("pipe = %v, want the idle timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a connection without traffic was not closed as idle")
	}
}

// TestPipeIdleAfterHalfClose: once the client half-closes, the idle
// timeout is kept by the server->client direction alone: a server that then
// goes silent does not hold the connection forever; one that keeps
// sending keeps it open.
func TestPipeIdleAfterHalfClose(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server, _, done := pipeUnderTest(t, idle)
	go io.Copy(io.Discard, client)
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The server sees the half-close...
	server.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("server read = %v, want EOF after the client's half-close", err)
	}
	// ...and may still send for a while.
	for i := 0; i < 12; i++ {
		if _, err := server.Write([]byte{'y'}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		select {
		case err := <-done:
			t.Fatalf("pipe ended while the server was sending after the half-close: %v", err)
		case <-time.After(idle / 4):
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, errIdle) {
			t.Fatalf("pipe = %v, want the idle timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a half-closed connection without traffic was not closed as idle")
	}
}

// TestPipeCopiesAndHalfCloses: bytes flow both ways unchanged and
// counted, and both clean half-closes end pipe without error.
func TestPipeCopiesAndHalfCloses(t *testing.T) {
	client, server, c, done := pipeUnderTest(t, time.Minute)
	go func() {
		io.Copy(server, server) // echo until the client half-closes
		server.(*net.TCPConn).CloseWrite()
	}()
	msg := []byte("hello through the pipe")
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	client.(*net.TCPConn).CloseWrite()
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo = %q, %v", got, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pipe = %v after clean half-closes", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pipe did not end after both half-closes")
	}
	if c.bytesIn.Load() != int64(len(msg)) || c.bytesOut.Load() != int64(len(msg)) {
		t.Fatalf("bytes in/out = %d/%d, want %d each", c.bytesIn.Load(), c.bytesOut.Load(), len(msg))
	}
}

// BenchmarkPipe is ward's copy loop alone, without TLS: 128-byte
// requests echoed back through one forwarder on loopback, pipe (ward)
// against two io.Copy goroutines (what a bare forwarder runs); p50, p99
// and p99.9 per round trip, allocations of the whole process per round
// trip (0 for both in steady state).
func BenchmarkPipe(b *testing.B) {
	for _, fw := range []string{"io.Copy", "pipe"} {
		b.Run(fw, func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() { // the echo app
				s, err := l.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				io.Copy(s, s)
			}()
			fl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer fl.Close()
			go func() { // the forwarder
				a, err := fl.Accept()
				if err != nil {
					return
				}
				defer a.Close()
				up, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					return
				}
				defer up.Close()
				if fw == "pipe" {
					pipe(newConnState("bench", true, a), a, up, time.Minute)
					return
				}
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, a); done <- struct{}{} }()
				go func() { io.Copy(a, up); done <- struct{}{} }()
				<-done
			}()
			c, err := net.Dial("tcp", fl.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 128)
			for range 100 { // warm up
				c.Write(msg)
				io.ReadFull(c, msg)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			for _, q := range []struct {
				name string
				at   int
			}{{"p50-µs", len(lat) / 2}, {"p99-µs", len(lat) * 99 / 100}, {"p99.9-µs", len(lat) * 999 / 1000}} {
				b.ReportMetric(float64(lat[q.at].Nanoseconds())/1000, q.name)
			}
		})
	}
}

// TestPipeIdleWhenTheServerStopsReading (attack): the client keeps
// sending, the server never reads, so once the socket buffers are full
// the client->server direction blocks in Write, where no read deadline of
// its own can fire. No byte moves either way: the connection is idle and
// must be closed as such (it was before the copy loop stopped asking for
// the time on every Read), not held, with its buffers and goroutines,
// for as long as the peer likes. The server->client direction is the one
// whose Read can time out meanwhile, so it must keep the watch too.
func TestPipeIdleWhenTheServerStopsReading(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, _, _, done := pipeUnderTest(t, idle)
	go netutil.Flood(client)
	waitIdle(t, done, "a connection whose server stopped reading was never closed: the client->server Write blocks, and nothing else watched the idle timeout")
}

// TestPipeIdleWhenTheClientStopsReading: the mirror case, the server
// sends and the client never reads (the server->client Write blocks).
func TestPipeIdleWhenTheClientStopsReading(t *testing.T) {
	const idle = 200 * time.Millisecond
	_, server, _, done := pipeUnderTest(t, idle)
	go netutil.Flood(server)
	waitIdle(t, done, "a connection whose client stopped reading was never closed")
}

// waitIdle fails t unless pipe ends with the idle timeout.
func waitIdle(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, errIdle) {
			t.Fatalf("pipe = %v, want the idle timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal(what)
	}
}

// TestPipeIdleWhenNeitherSideReads (attack, red team): the client and the
// server both send and neither reads (an HTTP/1.1 client pipelining
// requests without reading the responses, against a server that stops
// reading while its responses are not taken), so both directions block in
// Write and neither has a Read whose deadline could fire. Nothing moves:
// the idle timeout must close the connection (it held it for good).
func TestPipeIdleWhenNeitherSideReads(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server, _, done := pipeUnderTest(t, idle)
	go netutil.Flood(client)
	go netutil.Flood(server)
	waitIdle(t, done, "a connection where both sides send and neither reads was never closed: both directions block in Write")
}

// TestPipeIdleWhenTheClientHalfClosesAndStopsReading (attack, red team):
// the client sends its request, half-closes and never reads; the server
// answers with more than the socket buffers hold. The client->server
// direction ended at the half-close, the server->client one blocks in
// Write: the idle timeout must still close the connection (it held it
// for good, the server's response stuck in it).
func TestPipeIdleWhenTheClientHalfClosesAndStopsReading(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server, _, done := pipeUnderTest(t, idle)
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("server read = %v, want EOF after the client's half-close", err)
	}
	go netutil.Flood(server)
	waitIdle(t, done, "a half-closed connection whose client stopped reading was never closed")
}
