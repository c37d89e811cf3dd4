package kmsplugin

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
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
// at once ask, Status makes at most one round trip per health TTL while
// the authority answers, and one per RetryAfterFailure while it fails: a
// failing authority is not asked again for every poll (nor is a refusal
// audited again for each).
func TestStatusCallsTheAuthorityOncePerTTL(t *testing.T) {
	p, f, clk := newTestPlugin(t)
	seen := statusStorm(t, p, f, 64, 10)
	if e, d := f.calls(); e != 1 || d != 1 || seen["ok"] != 640 {
		t.Fatalf("640 concurrent Status calls: %d encrypts, %d decrypts, healthz %v; want one round trip, all ok", e, d, seen)
	}
	// Within the TTL of the success: not asked again.
	clk.add(DefaultHealthTTL - time.Millisecond)
	statusStorm(t, p, f, 16, 4)
	if e, _ := f.calls(); e != 1 {
		t.Fatalf("%d encrypts within the TTL of a success, want 1", e)
	}

	f.setFail(status.Error(codes.Unavailable, "connection refused"))
	clk.add(time.Millisecond)
	seen = statusStorm(t, p, f, 64, 10)
	if e, _ := f.calls(); e != 2 || len(seen) != 1 {
		t.Fatalf("640 concurrent Status calls against a failing authority: %d encrypts in all (want 2), healthz %v", e, seen)
	}
	for h := range seen {
		if !strings.HasPrefix(h, "authority unreachable: ") {
			t.Fatalf("healthz %q", h)
		}
	}
	// Still within RetryAfterFailure of the failed round trip: not asked
	// again.
	clk.add(RetryAfterFailure - time.Millisecond)
	statusStorm(t, p, f, 16, 4)
	if e, _ := f.calls(); e != 2 {
		t.Fatalf("%d encrypts within RetryAfterFailure of a failure, want 2", e)
	}
	// Past it: asked once more.
	clk.add(time.Millisecond)
	statusStorm(t, p, f, 16, 4)
	if e, _ := f.calls(); e != 3 {
		t.Fatalf("%d encrypts once RetryAfterFailure of the failure passed, want 3", e)
	}
}

// TestStatusBlipClearsSoon: one failed round trip (a blip: a call lost, an
// authority restarting) is not reported for the whole health TTL: the
// first Status RetryAfterFailure later asks again and is ok with its
// key_id, long before the TTL (the apiserver polls every 10 s while the
// plugin is unhealthy: a minute-long TTL held it off the plugin for a
// minute).
func TestStatusBlipClearsSoon(t *testing.T) {
	cfg, err := ParseConfig([]byte(testConfig + "health_ttl: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAuthority{key: "k8s/etcd", version: 1, minVer: 1}
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	p := New(cfg, f, WithClock(clk.now))
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	clk.add(time.Minute)
	f.setFail(status.Error(codes.Unavailable, "connection reset by peer"))
	if r := status_(t, p); !strings.HasPrefix(r.Healthz, "authority unreachable: ") || r.KeyId != "" {
		t.Fatalf("status during the blip: %+v", r)
	}
	f.setFail(nil)
	clk.add(RetryAfterFailure)
	if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
		t.Fatalf("status %s after the blip (health_ttl 1m): %+v, want ok", RetryAfterFailure, r)
	}
	// And the success is reused for the TTL again.
	e, _ := f.calls()
	clk.add(time.Minute - time.Millisecond)
	status_(t, p)
	if e2, _ := f.calls(); e2 != e {
		t.Fatal("a success after a blip was not reused for the health TTL")
	}
}

// TestStatusHammeredDuringOutage (attack on the authority through the
// plugin): an apiserver (or anything that reaches the socket) polling
// Status as fast as it can while the authority is down makes at most one
// round trip per RetryAfterFailure, and the outage is reported on every
// poll. Simulated over 30 s of the plugin's clock, in steps of 10 ms with
// 8 concurrent pollers each.
func TestStatusHammeredDuringOutage(t *testing.T) {
	p, f, clk := newTestPlugin(t)
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	f.setFail(status.Error(codes.Unavailable, "connection refused"))
	clk.add(DefaultHealthTTL)
	e0, _ := f.calls()
	const span, step = 30 * time.Second, 10 * time.Millisecond
	polls := 0
	for elapsed := time.Duration(0); elapsed < span; elapsed += step {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var bad string
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, _ := p.Status(context.Background(), &kmsapi.StatusRequest{})
				if !strings.HasPrefix(r.Healthz, "authority unreachable: ") || r.KeyId != "" {
					mu.Lock()
					bad = r.Healthz + " " + r.KeyId
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if bad != "" {
			t.Fatalf("Status during the outage: %s", bad)
		}
		polls += 8
		clk.add(step)
	}
	e, _ := f.calls()
	rounds := e - e0
	limit := int(span/RetryAfterFailure) + 1
	t.Logf("%d Status polls over %s of outage: %d round trips (limit %d)", polls, span, rounds, limit)
	if rounds > limit || rounds < limit-1 {
		t.Fatalf("%d round trips for %d polls over %s of outage, want about one per %s (%d)", rounds, polls, span, RetryAfterFailure, limit)
	}
}

// TestStatusNotOKOnceACallIsRefused: a call of the apiserver's refused in a
// way that holds for every call (identity denied or unauthenticated, TLS
// handshake failed, authority sealed, the key gone from an Encrypt) turns
// Status not-ok at once, not a TTL later, without asking the authority; a
// failure that concerns one object or one attempt does not (a Decrypt's
// NotFound: TestStatusDecryptNotFoundStaysOK).
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
		{"key gone", status.Error(codes.NotFound, "key not found"), "key not found: "},
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

// decryptNotFound answers Decrypt with NotFound while on, as the authority
// does for a ciphertext naming a version the key does not have.
type decryptNotFound struct {
	*fakeAuthority
	on *atomic.Bool
}

func (d decryptNotFound) Decrypt(ctx context.Context, ct []byte, encCtx map[string]string) ([]byte, error) {
	if d.on.Load() {
		return nil, status.Error(codes.NotFound, `key "k8s/etcd" has no version 9 (latest is 1)`)
	}
	return d.fakeAuthority.Decrypt(ctx, ct, encCtx)
}

// TestStatusDecryptNotFoundStaysOK: a Decrypt's NotFound concerns the
// ciphertext (a version the key never had: an object altered in etcd), not
// the plugin, unlike an Encrypt's (the plugin's key gone): Status stays ok
// with its key_id, without a round trip.
func TestStatusDecryptNotFoundStaysOK(t *testing.T) {
	_, f, clk := newTestPlugin(t)
	on := &atomic.Bool{}
	p := New(&Config{Cluster: "prod-1", Key: "k8s/etcd"}, decryptNotFound{f, on}, WithClock(clk.now))
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	enc, err := p.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	on.Store(true)
	if _, err := p.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); status.Code(err) != codes.NotFound {
		t.Fatal(err)
	}
	on.Store(false)
	e, _ := f.calls()
	if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
		t.Fatalf("Status after a Decrypt's NotFound: %+v", r)
	}
	if e2, _ := f.calls(); e2 != e {
		t.Fatal("Status made a round trip within the TTL of a success")
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

// alteringAuthority answers a Decrypt of a ciphertext it did not make as
// the real authority does (kmscrypto.ErrAuth is errs.Denied:
// PermissionDenied): what an object altered in etcd gets.
type alteringAuthority struct {
	*fakeAuthority
	made map[string]bool
}

func (a *alteringAuthority) Encrypt(ctx context.Context, key string, pt []byte, encCtx map[string]string) ([]byte, uint32, error) {
	ct, v, err := a.fakeAuthority.Encrypt(ctx, key, pt, encCtx)
	if err == nil {
		a.mu.Lock()
		a.made[string(ct)] = true
		a.mu.Unlock()
	}
	return ct, v, err
}

func (a *alteringAuthority) Decrypt(ctx context.Context, ct []byte, encCtx map[string]string) ([]byte, error) {
	a.mu.Lock()
	made := a.made[string(ct)]
	a.mu.Unlock()
	if !made {
		a.mu.Lock()
		a.decrypts++
		a.mu.Unlock()
		return nil, status.Error(codes.PermissionDenied, "key \"k8s/etcd\" version 1: ciphertext failed authentication: it was altered or truncated")
	}
	return a.fakeAuthority.Decrypt(ctx, ct, encCtx)
}

// TestAlteredObjectDoesNotPoisonStatus (attack): one DEK seed altered in
// etcd (whoever can write there, or a torn write) makes every read of that
// object a Decrypt the authority refuses with PermissionDenied. That
// refusal concerns the ciphertext, not the plugin: Status stays ok with
// its key_id for every other object (a not-ok Status, read on every list,
// took the apiserver off a healthy plugin), and the flood of refused
// Decrypts costs no extra round trip. A key whose name holds "sealed" is
// not a sealed authority either.
func TestAlteredObjectDoesNotPoisonStatus(t *testing.T) {
	ctx := context.Background()
	_, f, clk := newTestPlugin(t)
	a := &alteringAuthority{fakeAuthority: f, made: map[string]bool{}}
	p := New(&Config{Cluster: "prod-1", Key: "k8s/etcd"}, a, WithClock(clk.now))
	if r := status_(t, p); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	good, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good.Ciphertext...)
	bad[len(bad)-1] ^= 1
	e0, _ := f.calls()
	for range 200 {
		if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: bad, KeyId: good.KeyId}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("decrypt of the altered seed: %v", err)
		}
		if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
			t.Fatalf("status after decrypts of one altered object: %+v, want ok with its key_id", r)
		}
	}
	if e, _ := f.calls(); e != e0 {
		t.Fatalf("%d round trips within the TTL while an altered object was read", e-e0)
	}
	if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId}); err != nil {
		t.Fatalf("the good object: %v", err)
	}
	// A denied identity still shows within the TTL, by Status's own round
	// trip (and at once through a refused Encrypt, TestStatusNotOKOnceACallIsRefused).
	f.setFail(status.Error(codes.PermissionDenied, "deny-list: serial 1f revoked"))
	clk.add(DefaultHealthTTL)
	if r := status_(t, p); !strings.HasPrefix(r.Healthz, "denied by the authority: ") {
		t.Fatalf("status of a denied plugin: %+v", r)
	}

	// A key named with "sealed" in it: its disabled version is not a
	// sealed authority.
	_, f2, clk2 := newTestPlugin(t)
	f2.key, f2.version, f2.minVer = "k8s/sealed-secrets", 2, 1
	p2 := New(&Config{Cluster: "prod-1", Key: "k8s/sealed-secrets"}, f2, WithClock(clk2.now))
	old, err := p2.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	if r := status_(t, p2); r.Healthz != "ok" {
		t.Fatal(r.Healthz)
	}
	f2.mu.Lock()
	f2.minVer = 3 // version 2 disabled
	f2.mu.Unlock()
	if _, err := p2.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext, KeyId: old.KeyId}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("decrypt under a disabled version: %v", err)
	}
	if r := status_(t, p2); r.Healthz != "ok" {
		t.Fatalf("status after a disabled version of key \"k8s/sealed-secrets\": %q, want ok", r.Healthz)
	}
}

// TestNothingCachedOutlivesDisableOrRevocation (attack): what the plugin
// reuses is Status's word, never a call's result. A key version disabled
// (`ward key disable`) refuses the very next Decrypt of a seed under it,
// however recently Status was ok; the plugin's identity revoked refuses
// the very next Encrypt and Decrypt and turns Status not-ok at once, and
// Status stays not-ok past RetryAfterFailure (it asks again and is refused
// again: the short reuse of a failure never lapses into an old "ok").
func TestNothingCachedOutlivesDisableOrRevocation(t *testing.T) {
	ctx := context.Background()
	p, f, clk := newTestPlugin(t)
	seed := []byte("0123456789abcdef0123456789abcdef")
	old, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
	if err != nil {
		t.Fatal(err)
	}
	f.rotate()
	if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:2" {
		t.Fatalf("status: %+v", r)
	}
	if d, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext, KeyId: old.KeyId}); err != nil || string(d.Plaintext) != string(seed) {
		t.Fatalf("decrypt under version 1: %v", err)
	}
	// Version 1 disabled: the next Decrypt is refused, no clock moved.
	f.mu.Lock()
	f.minVer = 2
	f.mu.Unlock()
	if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext, KeyId: old.KeyId}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("decrypt under a disabled version: %v, want FailedPrecondition", err)
	}

	// The plugin's identity revoked: every call refused at once, Status
	// too, with no round trip of its own.
	cur, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
	if err != nil {
		t.Fatal(err)
	}
	f.setFail(status.Error(codes.PermissionDenied, "deny-list: spiffe://td/k8s/kms-plugin/cp-1 revoked"))
	if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: cur.Ciphertext, KeyId: cur.KeyId}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("decrypt once revoked: %v", err)
	}
	if _, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("encrypt once revoked: %v", err)
	}
	if r := status_(t, p); !strings.HasPrefix(r.Healthz, "denied by the authority: ") || r.KeyId != "" {
		t.Fatalf("status once revoked: %+v", r)
	}
	for range 3 {
		clk.add(RetryAfterFailure)
		if r := status_(t, p); !strings.HasPrefix(r.Healthz, "denied by the authority: ") || r.KeyId != "" {
			t.Fatalf("status %s after the refusal: %+v, want still denied", RetryAfterFailure, r)
		}
	}
}
