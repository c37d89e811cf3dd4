package kmsplugin

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

const testConfig = `socket: /run/ward/kms.sock
cluster: prod-1
key: k8s/etcd
`

func TestParseConfig(t *testing.T) {
	cases := []struct {
		name, yaml, wantErr string
	}{
		{"minimal", testConfig, ""},
		{"all fields", testConfig + "authority:\n  address: unix:///var/lib/ward/admin.sock\n  server_uid: 999\nhealth_ttl: 30s\ntimeout: 1s\n", ""},
		{"no socket", "cluster: a\nkey: k\n", "socket: required"},
		{"relative socket", "socket: kms.sock\ncluster: a\nkey: k\n", "must be an absolute path"},
		{"no cluster", "socket: /s\nkey: k\n", "cluster: required"},
		{"bad key", "socket: /s\ncluster: a\nkey: Bad/Key\n", "key: "},
		{"no key", "socket: /s\ncluster: a\n", "key: key name is empty"},
		{"ttl too long", testConfig + "health_ttl: 2m\n", "health_ttl"},
		{"timeout too long", testConfig + "timeout: 3s\n", "timeout"},
		{"unknown field", testConfig + "keyy: x\n", "keyy"},
		{"empty", "", "empty"},
		{"mtls", testConfig + mtlsAuthority, ""},
		{"mtls, several authorities", testConfig + "authority:\n  node_api: a.example:8443, b.example:8443\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: /run/ward/agent.sock\n", ""},
		{"both modes", testConfig + mtlsAuthority + "  address: unix:///var/lib/ward/admin.sock\n", "choose one mode"},
		{"mtls with server_uid", testConfig + mtlsAuthority + "  server_uid: 0\n", "choose one mode"},
		{"mtls without server_id", testConfig + "authority:\n  node_api: a.example:8443\n  workload_api_socket: /run/ward/agent.sock\n", "authority.server_id: required"},
		{"mtls without socket", testConfig + "authority:\n  node_api: a.example:8443\n  server_id: spiffe://td.example/ward/server\n", "authority.workload_api_socket: required"},
		{"mtls bad server_id", testConfig + "authority:\n  node_api: a.example:8443\n  server_id: https://td.example/ward/server\n  workload_api_socket: /run/ward/agent.sock\n", "is not a SPIFFE ID"},
		{"mtls trust domain as server_id", testConfig + "authority:\n  node_api: a.example:8443\n  server_id: spiffe://td.example\n  workload_api_socket: /run/ward/agent.sock\n", "names a whole trust domain"},
		{"mtls node_api with scheme", testConfig + "authority:\n  node_api: https://a.example:8443\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: /run/ward/agent.sock\n", "without a scheme"},
		{"mtls node_api without port", testConfig + "authority:\n  node_api: a.example\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: /run/ward/agent.sock\n", "is not host:port"},
		{"mtls socket as unix URL", testConfig + "authority:\n  node_api: a.example:8443\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: unix:///run/ward/agent.sock\n", "without unix://"},
		{"mtls relative socket", testConfig + "authority:\n  node_api: a.example:8443\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: agent.sock\n", "must be an absolute path"},
		{"server_id without node_api", testConfig + "authority:\n  server_id: spiffe://td.example/ward/server\n", "only for the mTLS mode"},
		{"socket without node_api", testConfig + "authority:\n  address: unix:///var/lib/ward/admin.sock\n  workload_api_socket: /run/ward/agent.sock\n", "authority.workload_api_socket: only for the mTLS mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.yaml))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.HealthTTL <= 0 || cfg.Timeout <= 0 {
					t.Fatalf("defaults not filled: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, c.wantErr)
			}
		})
	}
}

const mtlsAuthority = `authority:
  node_api: authority.example:8443
  server_id: spiffe://td.example/ward/server
  workload_api_socket: /run/ward/agent.sock
`

func TestKeyID(t *testing.T) {
	if got := KeyID("k8s/etcd", 7); got != "ward:k8s/etcd:7" {
		t.Fatalf("KeyID = %q", got)
	}
	cases := []struct {
		id      string
		key     string
		version uint32
		ok      bool
	}{
		{"ward:k8s/etcd:7", "k8s/etcd", 7, true},
		{"ward:a:4294967295", "a", 4294967295, true},
		{"ward:a:4294967296", "", 0, false},
		{"ward:a:0", "", 0, false},
		{"ward:a:07", "", 0, false},
		{"ward:a:", "", 0, false},
		{"ward:a", "", 0, false},
		{"ward::1", "", 0, false},
		{"ward:A:1", "", 0, false},
		{"other:a:1", "", 0, false},
		{"", "", 0, false},
		{"ward:a:+1", "", 0, false},
	}
	for _, c := range cases {
		key, v, err := ParseKeyID(c.id)
		if (err == nil) != c.ok || key != c.key || v != c.version {
			t.Errorf("ParseKeyID(%q) = %q, %d, %v; want %q, %d, ok=%v", c.id, key, v, err, c.key, c.version, c.ok)
		}
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestPlugin(t *testing.T) (*Plugin, *fakeAuthority, *clock) {
	t.Helper()
	cfg, err := ParseConfig([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAuthority{key: "k8s/etcd", version: 1, minVer: 1}
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	return New(cfg, f, WithClock(clk.now)), f, clk
}

func status_(t *testing.T, p *Plugin) *kmsapi.StatusResponse {
	t.Helper()
	r, err := p.Status(context.Background(), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != "v2" {
		t.Fatalf("version %q", r.Version)
	}
	return r
}

func TestStatusRoundTripCachedAndFollowsRotation(t *testing.T) {
	p, f, clk := newTestPlugin(t)
	r := status_(t, p)
	if r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
		t.Fatalf("status = %+v", r)
	}
	if e, d := f.calls(); e != 1 || d != 1 {
		t.Fatalf("a Status made %d encrypts and %d decrypts, want one round trip", e, d)
	}
	// Within the TTL the round trip is reused.
	clk.add(DefaultHealthTTL - time.Second)
	status_(t, p)
	if e, d := f.calls(); e != 1 || d != 1 {
		t.Fatalf("cached Status called the authority (%d, %d)", e, d)
	}
	// Rotation: after the TTL the next round trip reports the new version.
	f.rotate()
	clk.add(2 * time.Second)
	if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:2" {
		t.Fatalf("after rotate: %+v", r)
	}
	// An Encrypt that sees a newer version makes Status re-probe at once.
	f.rotate()
	er, err := p.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("seed"), Uid: "u1"})
	if err != nil || er.KeyId != "ward:k8s/etcd:3" {
		t.Fatalf("encrypt: %+v, %v", er, err)
	}
	before, _ := f.calls()
	if r := status_(t, p); r.KeyId != "ward:k8s/etcd:3" {
		t.Fatalf("status after encrypt under v3: %+v", r)
	}
	if after, _ := f.calls(); after != before+1 {
		t.Fatal("Status did not make a fresh round trip after Encrypt saw a new version")
	}
}

func TestStatusReasons(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"sealed", status.Error(codes.FailedPrecondition, "the authority is sealed: unseal it with `ward operator unseal`"), "authority sealed: "},
		{"unreachable", status.Error(codes.Unavailable, "connection refused"), "authority unreachable: "},
		{"timeout", context.DeadlineExceeded, "authority unreachable: "},
		{"disabled", status.Error(codes.FailedPrecondition, `key "k8s/etcd" version 1 is disabled`), "key disabled: "},
		{"not found", status.Error(codes.NotFound, `key "k8s/etcd" not found`), "key not found: "},
		{"denied", status.Error(codes.PermissionDenied, "denied by policy"), "denied by the authority: "},
		{"other", errors.New("boom"), "round trip failed: boom"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, f, clk := newTestPlugin(t)
			status_(t, p) // healthy first: key_id known
			f.setFail(c.err)
			clk.add(DefaultHealthTTL)
			r := status_(t, p)
			if !strings.HasPrefix(r.Healthz, c.want) {
				t.Fatalf("healthz %q, want prefix %q", r.Healthz, c.want)
			}
			// No key_id while unhealthy: a matching one would make the
			// apiserver extend its write seed's expiry (see Status).
			if r.KeyId != "" {
				t.Fatalf("key_id %q while unhealthy, want none", r.KeyId)
			}
			// A failure is reused for RetryAfterFailure (Status is no
			// amplifier: TestStatusCallsTheAuthorityOncePerTTL), and
			// recovery shows at the first Status after it.
			f.setFail(nil)
			before, _ := f.calls()
			if r := status_(t, p); !strings.HasPrefix(r.Healthz, c.want) || r.KeyId != "" {
				t.Fatalf("within RetryAfterFailure of the failure: %+v", r)
			}
			if after, _ := f.calls(); after != before {
				t.Fatal("a Status within RetryAfterFailure of a failed round trip called the authority")
			}
			clk.add(RetryAfterFailure)
			if r := status_(t, p); r.Healthz != "ok" || r.KeyId != "ward:k8s/etcd:1" {
				t.Fatalf("after recovery: %+v", r)
			}
		})
	}
}

func TestStatusNeverHealthyHasNoKeyID(t *testing.T) {
	p, f, _ := newTestPlugin(t)
	f.setFail(status.Error(codes.Unavailable, "connection refused"))
	if r := status_(t, p); r.Healthz == "ok" || r.KeyId != "" {
		t.Fatalf("status = %+v", r)
	}
}

func TestEncryptDecrypt(t *testing.T) {
	p, f, _ := newTestPlugin(t)
	ctx := context.Background()
	seed := []byte("0123456789abcdef0123456789abcdef")
	e1, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(e1.Annotations) != 0 {
		t.Fatalf("annotations %v: ward writes none", e1.Annotations)
	}
	f.rotate()
	e2, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "b"})
	if err != nil || e2.KeyId != "ward:k8s/etcd:2" {
		t.Fatalf("%+v %v", e2, err)
	}
	for _, e := range []*kmsapi.EncryptResponse{e1, e2} {
		d, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "c"})
		if err != nil || string(d.Plaintext) != string(seed) {
			t.Fatalf("decrypt %s: %v", e.KeyId, err)
		}
	}

	other := New(&Config{Cluster: "other", Key: "k8s/etcd"}, f)
	otherCT, _ := other.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
	foreign, _, _ := (&fakeAuthority{key: "tenant/x", version: 1}).Encrypt(ctx, "tenant/x", seed, p.encCtx)

	cases := []struct {
		name  string
		req   *kmsapi.DecryptRequest
		code  codes.Code
		words string
	}{
		{"not ward", &kmsapi.DecryptRequest{Ciphertext: []byte("k8s:enc:aescbc"), KeyId: e1.KeyId}, codes.InvalidArgument, "not a ward ciphertext"},
		{"other key", &kmsapi.DecryptRequest{Ciphertext: foreign, KeyId: "ward:tenant/x:1"}, codes.InvalidArgument, "not this plugin's"},
		{"key_id version mismatch", &kmsapi.DecryptRequest{Ciphertext: e1.Ciphertext, KeyId: e2.KeyId}, codes.InvalidArgument, "does not match"},
		{"key_id foreign", &kmsapi.DecryptRequest{Ciphertext: e1.Ciphertext, KeyId: "aws:arn:1"}, codes.InvalidArgument, "not made by ward"},
		{"annotations", &kmsapi.DecryptRequest{Ciphertext: e1.Ciphertext, KeyId: e1.KeyId, Annotations: map[string][]byte{"x.example.com": nil}}, codes.InvalidArgument, "writes none"},
		{"other cluster", &kmsapi.DecryptRequest{Ciphertext: otherCT.Ciphertext, KeyId: otherCT.KeyId}, codes.InvalidArgument, "authentication failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Decrypt(ctx, c.req)
			if status.Code(err) != c.code || !strings.Contains(err.Error(), c.words) {
				t.Fatalf("err = %v, want %s containing %q", err, c.code, c.words)
			}
		})
	}

	for _, n := range []int{0, MaxSeed + 1} {
		if _, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, n)}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Encrypt of %d bytes: %v", n, err)
		}
	}
	f.setFail(status.Error(codes.FailedPrecondition, "the authority is sealed"))
	if _, err := p.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ward encrypt: the authority is sealed") {
		t.Fatalf("sealed encrypt: %v", err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kms.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Lstat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o", st.Mode().Perm())
	}
	// Live: refused.
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another process answers") {
		t.Fatalf("live socket: %v", err)
	}
	// Stale (ours, nobody listening): replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln.Close()
	// Not a socket: refused.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	// Owned by someone else: refused (needs root to make one).
	if os.Geteuid() != 0 {
		t.Log("not root: skipping the foreign-owner case")
		return
	}
	foreign := filepath.Join(dir, "foreign.sock")
	fl, err := net.Listen("unix", foreign)
	if err != nil {
		t.Fatal(err)
	}
	fl.(*net.UnixListener).SetUnlinkOnClose(false)
	fl.Close()
	if err := os.Lchown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(foreign); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("foreign socket: %v", err)
	}
}

// TestServeOverSocket drives the plugin through its gRPC service on the
// unix socket with the k8s.io/kms client, as the apiserver does.
func TestServeOverSocket(t *testing.T) {
	p, _, _ := newTestPlugin(t)
	path := filepath.Join(t.TempDir(), "kms.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" {
		t.Fatalf("status %+v %v", st, err)
	}
	e, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed"), Uid: "1"})
	if err != nil || e.KeyId != st.KeyId {
		t.Fatalf("encrypt %+v %v", e, err)
	}
	d, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "2"})
	if err != nil || string(d.Plaintext) != "seed" {
		t.Fatalf("decrypt %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
