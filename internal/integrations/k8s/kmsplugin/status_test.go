package kmsplugin

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

// statusStorm calls Status n times from each of callers goroutines at once
// (the first round trip held in flight until all have started) and returns
// every healthz seen.
func statusStorm(t *testing.T, p *Plugin, f *fakeAuthority, callers, n int) map[string]int {
	t.Helper()
	hold := make(chan struct{})
	f.mu.Lock()
	f.hold = hold
	f.mu.Unlock()
	var started, done sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for range callers {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			for range n {
				r, err := p.Status(context.Background(), &kmsapi.StatusRequest{})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[r.Healthz]++
				mu.Unlock()
			}
		}()
	}
	started.Wait()
	close(hold)
	done.Wait()
	f.mu.Lock()
	f.hold = nil
	f.mu.Unlock()
	return seen
}

// TestStatusCallsTheAuthorityOncePerTTL: however often and however many
// at once ask, Status makes at most one round trip per health TTL, healthy
// or not: a failing authority is not asked again for every poll (nor is a
// refusal audited again for each).
func TestStatusCallsTheAuthorityOncePerTTL(t *testing.T) {
	p, f, clk := newTestPlugin(t)
	seen := statusStorm(t, p, f, 64, 10)
	if e, d := f.calls(); e != 1 || d != 1 || seen["ok"] != 640 {
		t.Fatalf("640 concurrent Status calls: %d encrypts, %d decrypts, healthz %v; want one round trip, all ok", e, d, seen)
	}

	f.setFail(status.Error(codes.Unavailable, "connection refused"))
	clk.add(DefaultHealthTTL)
	seen = statusStorm(t, p, f, 64, 10)
	if e, _ := f.calls(); e != 2 || len(seen) != 1 {
		t.Fatalf("640 concurrent Status calls against a failing authority: %d encrypts in all (want 2), healthz %v", e, seen)
	}
	for h := range seen {
		if !strings.HasPrefix(h, "authority unreachable: ") {
			t.Fatalf("healthz %q", h)
		}
	}
	// Still within the TTL of the failed round trip: not asked again.
	clk.add(DefaultHealthTTL - time.Millisecond)
	statusStorm(t, p, f, 16, 4)
	if e, _ := f.calls(); e != 2 {
		t.Fatalf("%d encrypts within the TTL of a failure, want 2", e)
	}
	// Past it: asked once more.
	clk.add(time.Millisecond)
	statusStorm(t, p, f, 16, 4)
	if e, _ := f.calls(); e != 3 {
		t.Fatalf("%d encrypts once the TTL of the failure passed, want 3", e)
	}
}

// TestStatusNotOKOnceACallIsRefused: a call of the apiserver's refused in a
// way that holds for every call (identity denied or unauthenticated, TLS
// handshake failed, authority sealed) turns Status not-ok at once, not a
// TTL later, without asking the authority; a failure that concerns one
// object or one attempt does not.
func TestStatusNotOKOnceACallIsRefused(t *testing.T) {
	ctx := context.Background()
	seed := []byte("0123456789abcdef0123456789abcdef")
	cases := []struct {
		name string
		err  error
		want string // healthz prefix; "" stays ok
	}{
		{"permission denied", status.Error(codes.PermissionDenied, "deny-list: serial 1f revoked"), "denied by the authority: "},
		{"unauthenticated", status.Error(codes.Unauthenticated, "client certificate expired"), "denied by the authority: "},
		{"handshake", status.Error(codes.Unavailable, "connection error: desc = \"transport: authentication handshake failed: unexpected ID\""), "TLS handshake with the authority failed: "},
		{"sealed", status.Error(codes.FailedPrecondition, "the authority is sealed"), "authority sealed: "},
		{"no SVID", &SVIDError{msg: "the plugin's X509-SVID expired"}, "no valid SVID: "},
		{"one attempt unavailable", status.Error(codes.Unavailable, "connection reset"), ""},
		{"not found", status.Error(codes.NotFound, "key not found"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, f, clk := newTestPlugin(t)
			if r := status_(t, p); r.Healthz != "ok" {
				t.Fatal(r.Healthz)
			}
			good, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
			if err != nil {
				t.Fatal(err)
			}
			f.setFail(c.err)
			if _, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); err == nil {
				t.Fatal("encrypt succeeded")
			}
			if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId}); err == nil {
				t.Fatal("decrypt succeeded")
			}
			e, d := f.calls()
			r := status_(t, p)
			if c.want == "" {
				if r.Healthz != "ok" {
					t.Fatalf("healthz %q after a failure of one call", r.Healthz)
				}
			} else if !strings.HasPrefix(r.Healthz, c.want) || r.KeyId != "" {
				t.Fatalf("status after a refused call: %+v, want healthz %q... and no key_id", r, c.want)
			}
			if e2, d2 := f.calls(); e2 != e || d2 != d {
				t.Fatal("Status called the authority within the TTL")
			}
			// Recovery shows once the TTL has passed.
			f.setFail(nil)
			clk.add(DefaultHealthTTL)
			if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
				t.Fatalf("after recovery: %+v", r)
			}
		})
	}
}

// TestStatusChecksTheSVIDFirst: in the mTLS mode Status asks the plugin's
// own SVID first (Ready): none, or an expired one, is not-ok at once, with
// no call to the authority, whatever a round trip said within the TTL; a
// new SVID ends what was learned with the old one (one round trip, not one
// per Status).
func TestStatusChecksTheSVIDFirst(t *testing.T) {
	_, f, clk := newTestPlugin(t)
	ra := &readyAuthority{fakeAuthority: f, cred: "serial-1"}
	p := New(&Config{Cluster: "prod-1", Key: "k8s/etcd"}, ra, WithClock(clk.now))
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	e, _ := f.calls()

	ra.set("", &SVIDError{msg: "the plugin's X509-SVID spiffe://td/k8s/kms-plugin expired at ..."})
	for range 10 {
		if r := status_(t, p); !strings.HasPrefix(r.Healthz, "no valid SVID: ") || r.KeyId != "" {
			t.Fatalf("status with an expired SVID: %+v", r)
		}
	}
	if e2, _ := f.calls(); e2 != e {
		t.Fatal("Status without a valid SVID called the authority")
	}

	// A renewed SVID: one round trip on it, then reused.
	ra.set("serial-2", nil)
	for range 10 {
		if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
			t.Fatalf("status on a renewed SVID: %+v", r)
		}
	}
	if e2, _ := f.calls(); e2 != e+1 {
		t.Fatalf("%d round trips on a renewed SVID, want 1", e2-e)
	}

	// A refusal learned with one SVID does not outlive it.
	f.setFail(status.Error(codes.PermissionDenied, "deny-list: serial serial-2 revoked"))
	if _, err := p.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("seed")}); status.Code(err) != codes.PermissionDenied {
		t.Fatal(err)
	}
	if r := status_(t, p); !strings.HasPrefix(r.Healthz, "denied by the authority: ") {
		t.Fatalf("status after a refusal: %+v", r)
	}
	f.setFail(nil)
	ra.set("serial-3", nil)
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatalf("status on the SVID after the refused one: %+v", r)
	}
}
