package wirecodec

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// replyBytes is the reply's ciphertext for caller c's call i of n bytes:
// every byte depends on (c, i, position), so a byte of another call's
// reply (a pooled buffer reused while gRPC still wrote it) never matches.
func replyBytes(c, i uint32, n int) []byte {
	b := make([]byte, n)
	x := c*0x9E3779B9 ^ i*0x85EBCA6B ^ 0xC2B2AE35
	for j := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = byte(x)
	}
	return b
}

// TestConcurrentRepliesNeverShareBuffers (red team): many callers at once
// on one server marshaling with Codec, each getting replies of its own
// (small ones, which share the pool's smallest tier, and large ones), and
// every byte of every reply is checked. A pooled buffer returned to the
// pool while gRPC still held it would let one caller's reply bytes (keys,
// plaintext) into another's, and fail here (run with -race).
func TestConcurrentRepliesNeverShareBuffers(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(ServerOption(), grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		for {
			var req wardv1.EncryptRequest
			if err := stream.RecvMsg(&req); err != nil {
				return nil // the client closed its side
			}
			if len(req.Plaintext) != 12 {
				return fmt.Errorf("bad request")
			}
			c, i, n := binary.BigEndian.Uint32(req.Plaintext), binary.BigEndian.Uint32(req.Plaintext[4:]), binary.BigEndian.Uint32(req.Plaintext[8:])
			if err := stream.SendMsg(&wardv1.EncryptResponse{Ciphertext: replyBytes(c, i, int(n)), KeyVersion: c<<16 | i}); err != nil {
				return err
			}
		}
	}))
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	}), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const callers, calls = 32, 150
	sizes := []int{0, 1, 7, 90, 500, 1000, 1023, 1024, 1025, 3000, 4090, 5000, 20000, 70000}
	streamDesc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	var wg sync.WaitGroup
	errc := make(chan error, callers)
	for c := range uint32(callers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			// unary calls and a bidirectional stream (replies queued on
			// one stream before gRPC writes them), alternately
			var stream grpc.ClientStream
			if c%2 == 1 {
				var err error
				if stream, err = conn.NewStream(ctx, streamDesc, "/ward.test.Echo/Stream"); err != nil {
					errc <- err
					return
				}
				defer stream.CloseSend()
			}
			for i := range uint32(calls) {
				n := sizes[(int(c)+int(i))%len(sizes)]
				req := &wardv1.EncryptRequest{Plaintext: make([]byte, 12)}
				binary.BigEndian.PutUint32(req.Plaintext, c)
				binary.BigEndian.PutUint32(req.Plaintext[4:], i)
				binary.BigEndian.PutUint32(req.Plaintext[8:], uint32(n))
				var resp wardv1.EncryptResponse
				var err error
				if stream == nil {
					err = conn.Invoke(ctx, "/ward.test.Echo/Unary", req, &resp)
				} else if err = stream.SendMsg(req); err == nil {
					err = stream.RecvMsg(&resp)
				}
				if err != nil {
					errc <- fmt.Errorf("caller %d call %d: %w", c, i, err)
					return
				}
				if resp.KeyVersion != c<<16|i || !bytes.Equal(resp.Ciphertext, replyBytes(c, i, n)) {
					errc <- fmt.Errorf("caller %d call %d: the %d-byte reply holds bytes that are not its own (key_version %x)", c, i, n, resp.KeyVersion)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}
