package gateway

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
)

// spliceUnderTest runs splice between a (the caller's gateway end) and b
// (the inbound proxy's) and returns the far ends and splice's result.
func spliceUnderTest(t *testing.T, idle time.Duration) (client, server net.Conn, done <-chan error) {
	t.Helper()
	client, a := netutil.TCPPair(t)
	b, server := netutil.TCPPair(t)
	errc := make(chan error, 1)
	go func() { errc <- splice(&conn{}, a, b, idle) }()
	return client, server, errc
}

func waitIdle(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, errIdle) {
			t.Fatalf("splice = %v, want the idle timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal(what)
	}
}

// TestSpliceIdleWhenNeitherSideReads (attack, red team): both sides send
// and neither reads, so both directions block writing, where no read
// deadline fires: the idle timeout must still close the connection (it
// was held for good).
func TestSpliceIdleWhenNeitherSideReads(t *testing.T) {
	client, server, done := spliceUnderTest(t, 200*time.Millisecond)
	go netutil.Flood(client)
	go netutil.Flood(server)
	waitIdle(t, done, "a connection where both sides send and neither reads was never closed")
}

// TestSpliceIdleWhenTheClientHalfClosesAndStopsReading (attack, red
// team): the caller half-closes and never reads while the other side
// sends: the caller->proxy direction ended, the other blocks writing.
func TestSpliceIdleWhenTheClientHalfClosesAndStopsReading(t *testing.T) {
	client, server, done := spliceUnderTest(t, 200*time.Millisecond)
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("server read = %v, want EOF after the half-close", err)
	}
	go netutil.Flood(server)
	waitIdle(t, done, "a half-closed connection whose caller stopped reading was never closed")
}

// TestSpliceCopiesBusyConnection: a connection moving bytes for several
// idle periods is not closed as idle by the watch.
func TestSpliceCopiesBusyConnection(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server, done := spliceUnderTest(t, idle)
	go io.Copy(io.Discard, client)
	for i := 0; i < 24; i++ {
		if _, err := server.Write([]byte{'x'}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		select {
		case err := <-done:
			t.Fatalf("splice ended while the server was sending: %v", err)
		case <-time.After(idle / 4):
		}
	}
	waitIdle(t, done, "a connection without traffic was not closed as idle")
}
