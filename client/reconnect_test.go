package client

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestReconnectsSoonAfterAnOutage: an authority that was down for more
// connection attempts than gRPC's default backoff makes in a minute (its
// delays from 1 s, x1.6 up to 120 s: the sixth failed attempt is ~16 s in
// and waits ~17 s more) is reached again within a few seconds of coming
// back (the kms-plugin's path: client.Dial). While down, the socket
// accepts and drops every connection, so the test counts the attempts
// instead of waiting for them.
func TestReconnectsSoonAfterAnOutage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.sock")
	addr := "unix://" + p
	serve := func() *grpc.Server {
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		wardv1.RegisterKMSServer(g, &fakeAuthority{})
		go g.Serve(ln)
		return g
	}
	g := serve()
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "k", Plaintext: []byte("x")})
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}

	// Outage: every connection attempt is accepted and dropped at once.
	g.Stop()
	down, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	go func() {
		for {
			conn, err := down.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			conn.Close()
		}
	}()
	const wantAttempts = 6
	deadline := time.Now().Add(15 * time.Second)
	for attempts.Load() < wantAttempts {
		if time.Now().After(deadline) {
			down.Close()
			t.Fatalf("only %d reconnect attempts in 15 s of outage (gRPC's default backoff would make 5)", attempts.Load())
		}
		if call() == nil {
			t.Fatal("a call succeeded during the outage")
		}
		time.Sleep(50 * time.Millisecond)
	}
	down.Close()

	// Back: reached again well before the default backoff's next attempt.
	g = serve()
	defer g.Stop()
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := call()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reconnect within 10 s of the authority coming back (after %d attempts while down): %v", attempts.Load(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
