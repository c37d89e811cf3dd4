package wirecodec

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestPooledRepliesNeverCross (red team): the codec marshals replies into
// pooled buffers that gRPC frees once written. If one went back to the
// pool while gRPC still held it, another call's reply would be marshaled
// over it and a caller would receive (part of) someone else's reply: a
// secret leak. Many callers at once over a real server, each reply
// derived from its own request, sizes on both sides of gRPC's pooling
// threshold: every caller gets exactly its own (run with -race too).
func TestPooledRepliesNeverCross(t *testing.T) {
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOption(), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		var req wardv1.EncryptRequest
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		out := make([]byte, 0, len(req.Plaintext)+len(req.Key))
		out = append(out, req.Key...)
		for i := len(req.Plaintext) - 1; i >= 0; i-- {
			out = append(out, req.Plaintext[i]^0x5a)
		}
		return ss.SendMsg(&wardv1.EncryptResponse{Ciphertext: out, KeyVersion: uint32(len(out))})
	}))
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const callers, calls = 24, 60
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				size := (c*calls + i) * 37 % (3 * pooledSize)
				key := fmt.Sprintf("caller-%02d-call-%03d:", c, i)
				pt := bytes.Repeat([]byte{byte(c + 1)}, size)
				var resp wardv1.EncryptResponse
				if err := conn.Invoke(t.Context(), "/leak.Test/Echo", &wardv1.EncryptRequest{Key: key, Plaintext: pt}, &resp); err != nil {
					t.Error(err)
					return
				}
				want := []byte(key)
				for range pt {
					want = append(want, byte(c+1)^0x5a)
				}
				if !bytes.Equal(resp.Ciphertext, want) || resp.KeyVersion != uint32(len(want)) {
					t.Errorf("caller %d call %d (%d bytes) received another reply: %.60q", c, i, size, resp.Ciphertext)
					return
				}
			}
		}()
	}
	wg.Wait()
}
