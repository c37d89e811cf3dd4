package kmsplugin

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// stuckKMS takes every call and never answers it (until the test ends).
type stuckKMS struct {
	wardv1.UnimplementedKMSServer
	stop chan struct{}
}

func (k stuckKMS) Encrypt(ctx context.Context, _ *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	select {
	case <-k.stop:
	case <-ctx.Done():
	}
	return nil, status.Error(codes.Internal, "unreachable")
}

// TestHungAuthorityBoundedByTimeout (failure): an authority that accepts
// the connection and never says a word (a hung process, a full accept
// queue behind a stuck server), or that speaks gRPC but never answers the
// call (stuck on its store), costs each call of the apiserver's at most the
// plugin's timeout: Encrypt fails with DeadlineExceeded and Status says the
// authority is unreachable, without a key_id. The apiserver's own call has
// no deadline here: the plugin's is the only bound. The ceiling below
// bounds the test, not the plugin's speed.
func TestHungAuthorityBoundedByTimeout(t *testing.T) {
	for _, c := range []struct {
		name  string
		serve func(t *testing.T, ln net.Listener)
	}{
		{"accepts and never answers", func(t *testing.T, ln net.Listener) {
			go func() {
				var conns []net.Conn // held open, silent, until the listener closes
				for {
					conn, err := ln.Accept()
					if err != nil {
						for _, c := range conns {
							c.Close()
						}
						return
					}
					conns = append(conns, conn)
				}
			}()
		}},
		{"never answers the call", func(t *testing.T, ln net.Listener) {
			srv := grpc.NewServer(grpc.Creds(local.NewCredentials()))
			stop := make(chan struct{})
			wardv1.RegisterKMSServer(srv, stuckKMS{stop: stop})
			go srv.Serve(ln)
			t.Cleanup(func() { close(stop); srv.Stop() })
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			c.serve(t, ln)
			cl, err := client.Dial("unix://" + ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cl.Close() })
			cfg, err := ParseConfig([]byte(testConfig + "timeout: 300ms\n"))
			if err != nil {
				t.Fatal(err)
			}
			p := New(cfg, ClientAuthority(cl))

			type result struct {
				err    error
				status *kmsapi.StatusResponse
			}
			done := make(chan result, 1)
			go func() {
				_, err := p.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef")})
				st, _ := p.Status(context.Background(), &kmsapi.StatusRequest{})
				done <- result{err, st}
			}()
			select {
			case r := <-done:
				if status.Code(r.err) != codes.DeadlineExceeded || !strings.Contains(r.err.Error(), "ward encrypt") {
					t.Fatalf("encrypt against a hung authority: %v, want DeadlineExceeded", r.err)
				}
				if !strings.HasPrefix(r.status.Healthz, "authority unreachable: ") || r.status.KeyId != "" {
					t.Fatalf("status against a hung authority: %+v", r.status)
				}
				t.Logf("encrypt: %v; healthz: %s", r.err, r.status.Healthz)
			case <-time.After(30 * time.Second):
				t.Fatal("a call against a hung authority did not return (the plugin's timeout is 300ms)")
			}
		})
	}
}
