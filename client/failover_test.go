package client

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

type fakeAuthority struct {
	wardv1.UnimplementedKMSServer
	wardv1.UnimplementedKeysServer
	wardv1.UnimplementedOperatorServer
	mu       sync.Mutex
	keys     []string // idempotency keys of RotateKey calls seen
	failNext int      // RotateKey calls to answer Unavailable (after "running" them)
	calls    int
}

func (f *fakeAuthority) Encrypt(context.Context, *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	return &wardv1.EncryptResponse{Ciphertext: []byte("ct")}, nil
}

func (f *fakeAuthority) RotateKey(ctx context.Context, _ *wardv1.RotateKeyRequest) (*wardv1.Key, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, md.Get(reqctx.IdempotencyHeader)...)
	if f.failNext > 0 {
		f.failNext--
		return nil, status.Error(codes.Unavailable, "etcd member lost")
	}
	return &wardv1.Key{LatestVersion: 2}, nil
}

func (f *fakeAuthority) Init(context.Context, *wardv1.InitRequest) (*wardv1.InitResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return nil, status.Error(codes.Unavailable, "lost after it was sent")
}

func serveFake(t *testing.T, f *fakeAuthority) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	wardv1.RegisterKMSServer(g, f)
	wardv1.RegisterKeysServer(g, f)
	wardv1.RegisterOperatorServer(g, f)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return "unix://" + p
}

func TestFailoverSkipsADeadAuthority(t *testing.T) {
	live := &fakeAuthority{}
	dead := "unix://" + filepath.Join(t.TempDir(), "gone.sock")
	c, err := Dial(dead+","+serveFake(t, live), WithAttemptTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range 3 {
		if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}); err != nil {
			t.Fatalf("encrypt with one authority down: %v", err)
		}
	}
	if got := c.Addresses(); len(got) != 2 {
		t.Fatalf("addresses %v", got)
	}
}

// A state change is retried with the same idempotency key on every
// attempt (the authorities deduplicate it by that key).
func TestFailoverRetriesAChangeWithOneIdempotencyKey(t *testing.T) {
	a, b := &fakeAuthority{failNext: 1}, &fakeAuthority{failNext: 1}
	c, err := Dial(serveFake(t, a)+","+serveFake(t, b), WithAttemptTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "k"})
	if err != nil || k.LatestVersion != 2 {
		t.Fatalf("rotate: %v %v", k, err)
	}
	seen := append(append([]string{}, a.keys...), b.keys...)
	if len(seen) != 3 {
		t.Fatalf("%d attempts carried a key, want 3 (two Unavailable, one success): %v", len(seen), seen)
	}
	for _, k := range seen {
		if k != seen[0] || k == "" {
			t.Fatalf("attempts carried different idempotency keys: %v", seen)
		}
	}
	// A second call gets a new key.
	if _, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "k"}); err != nil {
		t.Fatal(err)
	}
	all := append(append([]string{}, a.keys...), b.keys...)
	if len(all) != 4 {
		t.Fatalf("want 4 attempts in all: %v", all)
	}
	n := 0
	for _, k := range all {
		if k == seen[0] {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("a new call reused the previous call's idempotency key: %v", all)
	}
}

// Operator lifecycle calls are never repeated once sent.
func TestFailoverNeverRepeatsInit(t *testing.T) {
	a, b := &fakeAuthority{}, &fakeAuthority{}
	c, err := Dial(serveFake(t, a)+","+serveFake(t, b), WithAttemptTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("init: %v", err)
	}
	if a.calls+b.calls != 1 {
		t.Fatalf("init was sent %d times, want once", a.calls+b.calls)
	}
}

func TestRetryable(t *testing.T) {
	cases := []struct {
		mode reqctx.Retry
		err  error
		want bool
	}{
		{reqctx.RetrySafe, status.Error(codes.Unavailable, "x"), true},
		{reqctx.RetrySafe, status.Error(codes.DeadlineExceeded, "x"), true},
		{reqctx.RetrySafe, status.Error(codes.Aborted, "x"), false},
		{reqctx.RetryWithKey, status.Error(codes.Aborted, "still running"), true},
		{reqctx.RetrySafe, status.Error(codes.FailedPrecondition, "the authority is sealed: unseal it"), true},
		{reqctx.RetrySafe, status.Error(codes.FailedPrecondition, "key disabled"), false},
		{reqctx.RetryWithKey, status.Error(codes.InvalidArgument, "x"), false},
		{reqctx.RetryNever, status.Error(codes.Unavailable, "error reading from server: EOF"), false},
		{reqctx.RetryNever, status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial unix /x: connect: connection refused"`), true},
	}
	for _, c := range cases {
		if got := retryable(c.mode, c.err); got != c.want {
			t.Errorf("retryable(%v, %v) = %v, want %v", c.mode, c.err, got, c.want)
		}
	}
}
