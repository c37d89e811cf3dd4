package kmsplugin

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/nodeapi"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/testutil/agenttest"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// The mTLS mode end to end: the test authority (real CA, registry, KMS,
// policy store), the real Node API serving the workload KMS, a real ward
// agent attested with a join token serving the Workload API, and the plugin
// with its SVID from that agent, driven over its socket by the k8s.io/kms
// client as the apiserver does.

// mtlsSVIDTTL is the workload SVIDs' lifetime: short, so the plugin's
// SVID rotates (and, once its agent is evicted, expires) within the test.
const mtlsSVIDTTL = 10 * time.Second

type mtlsEnv struct {
	a         *authoritytest.Authority
	nodeAPI   string // host:port
	agentSock string
	agentID   spiffeid.ID
	pluginID  spiffeid.ID
	logs      *syncbuf.Buffer // the agent's
}

func newMTLSEnv(t *testing.T) *mtlsEnv {
	t.Helper()
	ctx := context.Background()
	a := authoritytest.New(t, authoritytest.WithKMS(), authoritytest.WithPolicy(),
		authoritytest.WithCAConfig(func(c *ca.Config) { c.SVIDTTL = mtlsSVIDTTL }))
	e := &mtlsEnv{a: a, agentID: a.ID(registry.AgentIDPrefix + "node-1"),
		pluginID: a.ID("/k8s/kms-plugin/node-1"), logs: &syncbuf.Buffer{}}
	e.nodeAPI = e.serveNodeAPI(t).addr

	if _, err := a.KMS.Create(ctx, "k8s/etcd", "confidential", ""); err != nil {
		t.Fatal(err)
	}
	e.permit(t, e.pluginID)
	sels, err := attest.ParseSelectors([]string{"unix:uid:" + strconv.Itoa(os.Getuid())})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Registry.CreateEntry(ctx, registry.Entry{SPIFFEID: e.pluginID.String(), ParentID: e.agentID.String(), Selectors: sels}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	b, err := a.CA.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	pemBundle, _ := b.X509Bundle().Marshal()
	bp := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bp, pemBundle, 0o644); err != nil {
		t.Fatal(err)
	}
	e.agentSock = filepath.Join(dir, "agent.sock")
	cfg := &agent.Config{TrustDomain: a.TD.Name(), ServerAddress: e.nodeAPI, ServerSPIFFEID: nodeapi.ServerID(a.TD).String(),
		TrustBundlePath: bp, SocketPath: e.agentSock, DataDir: filepath.Join(dir, "data"),
		JoinToken: a.JoinToken(t, "node-1"), SyncInterval: 200 * 1e6, LogLevel: "debug"}
	agenttest.Run(t, ctx, cfg, e.logs, slog.LevelDebug)
	return e
}

// nodeAPIServer is one Node API serving the test authority.
type nodeAPIServer struct {
	addr     string
	srv      *nodeapi.Server
	accepted *atomic.Int64 // connections accepted
}

// serveNodeAPI starts a Node API over the test authority (CA, registry,
// KMS, policy, audit) on a fresh loopback port until the test ends.
// Several of them stand for several authorities sharing one store.
func (e *mtlsEnv) serveNodeAPI(t *testing.T) nodeAPIServer {
	t.Helper()
	return e.serveNodeAPIWith(t, nil)
}

// serveNodeAPIWith is serveNodeAPI with available as the Node API's
// Config.Available (nil: always available).
func (e *mtlsEnv) serveNodeAPIWith(t *testing.T, available func() (<-chan struct{}, error)) nodeAPIServer {
	t.Helper()
	a := e.a
	srv, err := nodeapi.New(nodeapi.Config{CA: a.CA, Registry: a.Registry, Audit: a, KMS: a.KMS, Policy: a.Policy, AgentSVIDTTL: time.Hour, Available: available})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := nodeAPIServer{addr: l.Addr().String(), srv: srv, accepted: &atomic.Int64{}}
	go srv.Serve(countingListener{l, n.accepted})
	t.Cleanup(srv.Stop)
	return n
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// permit applies a policy version letting only id use the key.
func (e *mtlsEnv) permit(t *testing.T, id spiffeid.ID) {
	t.Helper()
	pol := fmt.Sprintf(`@id("kms-plugin-wraps-seeds")
permit(principal == Workload::"%s", action in [Action::"kms:encrypt", Action::"kms:decrypt"], resource == Key::"k8s/etcd");`, id)
	if _, err := e.a.Policy.Apply(context.Background(), "admin:uid=0", map[string][]byte{"kms.cedar": []byte(pol)}, ""); err != nil {
		t.Fatal(err)
	}
}

// pluginFor runs the plugin in the mTLS mode against nodeAPI, accepting
// serverID, on a fresh socket; it returns the apiserver's view of it.
// Its health_ttl is 1ms: every Status makes a round trip.
func (e *mtlsEnv) pluginFor(t *testing.T, nodeAPI string, serverID spiffeid.ID) (kmsapi.KeyManagementServiceClient, *NodeAPIAuthority, *Config) {
	t.Helper()
	return e.pluginTTL(t, nodeAPI, serverID, "1ms")
}

// pluginTTL is pluginFor with the health_ttl (and the plugin's options) given.
func (e *mtlsEnv) pluginTTL(t *testing.T, nodeAPI string, serverID spiffeid.ID, ttl string, opts ...Option) (kmsapi.KeyManagementServiceClient, *NodeAPIAuthority, *Config) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "kms.sock")
	cfg, err := ParseConfig(fmt.Appendf(nil, "socket: %s\ncluster: prod-1\nkey: k8s/etcd\nhealth_ttl: %s\nauthority:\n  node_api: %s\n  server_id: %s\n  workload_api_socket: %s\n",
		sock, ttl, nodeAPI, serverID, e.agentSock))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Authority.MTLS() {
		t.Fatal("not the mTLS mode")
	}
	src := WatchWorkloadAPI(cfg.Authority.WorkloadAPISocket)
	t.Cleanup(func() { src.Close() })
	auth, err := NodeAPIAuthorityFor(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	ln, err := Listen(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- New(cfg, auth, opts...).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn), auth, cfg
}

// eventually polls cond (bounded) and fails with what and cond's last word.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func statusOf(t *testing.T, c kmsapi.KeyManagementServiceClient) *kmsapi.StatusResponse {
	t.Helper()
	r, err := c.Status(context.Background(), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err) // the plugin answers Status even when unhealthy
	}
	return r
}

// pluginEvents are the audit events of the plugin's calls (actor: its
// SPIFFE ID) of operation op with result.
func (e *mtlsEnv) pluginEvents(op, result string) []audit.Event {
	var out []audit.Event
	for _, ev := range e.a.Events(op) {
		if ev.Actor == e.pluginID.String() && ev.Result == result {
			out = append(out, ev)
		}
	}
	return out
}

// pluginKMSCalls counts the KMS calls of the plugin's SPIFFE ID the
// authority audited, whatever their result.
func (e *mtlsEnv) pluginKMSCalls() int {
	n := 0
	for _, op := range []string{"kms.encrypt", "kms.decrypt"} {
		for _, ev := range e.a.Events(op) {
			if ev.Actor == e.pluginID.String() {
				n++
			}
		}
	}
	return n
}

// impostor is a gRPC KMS server with a valid SVID that is not the Node
// API's; it counts the calls that reach it.
func impostor(t *testing.T, svid *x509svid.SVID, bundle *authoritytest.Authority) (addr string, calls *atomic.Int64) {
	t.Helper()
	b, err := bundle.CA.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	calls = &atomic.Int64{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(svid, b.X509Bundle(), tlsconfig.AuthorizeAny()))))
	wardv1.RegisterKMSServer(srv, &countingKMS{calls: calls})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String(), calls
}

type countingKMS struct {
	wardv1.UnimplementedKMSServer
	calls *atomic.Int64
}

func (k *countingKMS) Encrypt(context.Context, *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	k.calls.Add(1)
	return nil, status.Error(codes.Internal, "impostor")
}

func issued(t *testing.T, a *authoritytest.Authority, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	chain, key, err := a.IssueSVID(context.Background(), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// TestMTLSMode runs the mTLS mode and the attacks on it in one setup:
// served as a workload, audited under its own SPIFFE ID, key rotation and
// SVID rotation followed; a policy that does not allow the plugin, and a
// revocation of its ID, refuse it (audited); a server with another valid
// SVID of the trust domain, or with the Node API's ID from another CA, gets
// no call; once its agent is evicted the plugin's SVID runs out and so does
// its access. No error or healthz text carries the seed.
func TestMTLSMode(t *testing.T) {
	e := newMTLSEnv(t)
	ctx := context.Background()
	serverID := nodeapi.ServerID(e.a.TD)

	// The socket rules are the admin mode's: a socket owned by another
	// uid at the configured path is refused (root only), ours is 0600.
	if os.Geteuid() == 0 {
		foreign := filepath.Join(t.TempDir(), "kms.sock")
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
			t.Fatalf("foreign-owned socket: %v", err)
		}
	}
	kc, auth, cfg := e.pluginFor(t, e.nodeAPI, serverID)
	// slow reuses what it learned for a minute: it must still say not-ok
	// as soon as it knows it cannot be served (its SVID refused or expired).
	// It reuses a refusal for a minute too (the default, a second, could
	// pass on a loaded machine between the refused call and the Status
	// that must not ask the authority).
	slow, slowAuth, _ := e.pluginTTL(t, e.nodeAPI, serverID, "1m", WithRetryAfterFailure(time.Minute))
	if st, err := os.Lstat(cfg.Socket); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("plugin socket: %v %v", st.Mode(), err)
	}

	seed := []byte("0123456789abcdef0123456789abcdef")
	var said []string // every healthz and error text the apiserver saw
	var st *kmsapi.StatusResponse
	eventually(t, "a healthy Status (agent attested, SVID issued, round trip over the Node API)", func() (bool, string) {
		st = statusOf(t, kc)
		said = append(said, st.Healthz)
		return st.Healthz == "ok", st.Healthz
	})
	if st.KeyId != "ward:k8s/etcd:1" {
		t.Fatalf("key_id %q", st.KeyId)
	}
	first, err := auth.SVID()
	if err != nil || first.ID != e.pluginID {
		t.Fatalf("plugin SVID %v %v", first, err)
	}
	enc, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("encrypt %v %v", enc, err)
	}
	dec, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "2"})
	if err != nil || string(dec.Plaintext) != string(seed) {
		t.Fatalf("decrypt %v", err)
	}
	// Audited by the authority under the plugin's own SPIFFE ID.
	if len(e.pluginEvents("kms.encrypt", audit.ResultOK)) == 0 || len(e.pluginEvents("kms.decrypt", audit.ResultOK)) == 0 {
		t.Fatalf("no kms.encrypt/decrypt events of %s: %+v", e.pluginID, e.a.Events("kms.encrypt"))
	}

	t.Run("key rotation changes key_id", func(t *testing.T) {
		if _, err := e.a.KMS.Rotate(ctx, "k8s/etcd"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "key_id ward:k8s/etcd:2", func() (bool, string) {
			st := statusOf(t, kc)
			return st.Healthz == "ok" && st.KeyId == "ward:k8s/etcd:2", st.Healthz + " " + st.KeyId
		})
		if d, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil || string(d.Plaintext) != string(seed) {
			t.Fatalf("old seed after rotation: %v", err)
		}
	})

	t.Run("SVID rotation followed", func(t *testing.T) {
		// Once the first SVID has expired, a healthy round trip can only
		// have ridden on a later one: the Node API re-verifies the client
		// chain on every call.
		eventually(t, "the plugin's first SVID to expire", func() (bool, string) {
			return time.Now().After(first.Certificates[0].NotAfter.Add(time.Second)), ""
		})
		eventually(t, "a healthy Status on a renewed SVID", func() (bool, string) {
			st := statusOf(t, kc)
			return st.Healthz == "ok", st.Healthz
		})
		now, err := auth.SVID()
		if err != nil || now.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			t.Fatalf("SVID not rotated: %v", err)
		}
	})

	t.Run("not allowed by policy: refused and audited", func(t *testing.T) {
		before := len(e.pluginEvents("kms.encrypt", audit.ResultDenied))
		e.permit(t, e.a.ID("/someone/else"))
		eventually(t, "an unhealthy Status naming the denial", func() (bool, string) {
			st := statusOf(t, kc)
			said = append(said, st.Healthz)
			return strings.HasPrefix(st.Healthz, "denied by the authority: ") && st.KeyId == "", st.Healthz
		})
		_, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "3"})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), e.pluginID.String()) {
			t.Fatalf("encrypt not allowed: %v", err)
		}
		said = append(said, err.Error())
		if len(e.pluginEvents("kms.encrypt", audit.ResultDenied)) <= before {
			t.Fatal("the refusal was not audited under the plugin's SPIFFE ID")
		}
		e.permit(t, e.pluginID)
		eventually(t, "healthy again", func() (bool, string) { st := statusOf(t, kc); return st.Healthz == "ok", st.Healthz })
	})

	t.Run("revoked plugin ID: refused and audited", func(t *testing.T) {
		before := len(e.pluginEvents("kms.encrypt", audit.ResultDenied))
		if _, err := e.a.Policy.Revoke(ctx, "admin:uid=0", []string{e.pluginID.String()}, nil, false, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, "an unhealthy Status naming the deny-list", func() (bool, string) {
			st := statusOf(t, kc)
			said = append(said, st.Healthz)
			return strings.HasPrefix(st.Healthz, "denied by the authority: ") && strings.Contains(st.Healthz, "deny-list"), st.Healthz
		})
		_, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("revoked decrypt: %v", err)
		}
		said = append(said, err.Error())
		if len(e.pluginEvents("kms.encrypt", audit.ResultDenied)) <= before {
			t.Fatal("the refusal was not audited under the plugin's SPIFFE ID")
		}
		if _, err := e.a.Policy.Revoke(ctx, "admin:uid=0", []string{e.pluginID.String()}, nil, true, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, "healthy again", func() (bool, string) { st := statusOf(t, kc); return st.Healthz == "ok", st.Healthz })
	})

	t.Run("revoked SVID serial: refused until the next SVID", func(t *testing.T) {
		cur, err := auth.SVID()
		if err != nil {
			t.Fatal(err)
		}
		serial := cur.Certificates[0].SerialNumber.Text(16)
		if _, err := e.a.Policy.Revoke(ctx, "admin:uid=0", nil, []string{serial}, false, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, "an unhealthy Status naming the deny-list", func() (bool, string) {
			st := statusOf(t, kc)
			said = append(said, st.Healthz)
			if s, err := auth.SVID(); err == nil && s.Certificates[0].SerialNumber.Text(16) != serial {
				t.Skip("the SVID was renewed before the revocation was seen (a loaded machine)")
			}
			return strings.HasPrefix(st.Healthz, "denied by the authority: ") && strings.Contains(st.Healthz, "deny-list"), st.Healthz
		})
		// The agent's next SVID (new serial) is served again.
		eventually(t, "healthy on the renewed SVID", func() (bool, string) { st := statusOf(t, kc); return st.Healthz == "ok", st.Healthz })
		if now, _ := auth.SVID(); now == nil || now.Certificates[0].SerialNumber.Text(16) == serial {
			t.Fatal("healthy on the revoked serial")
		}
	})

	t.Run("revoked SVID serial: Status not-ok at the first refused call", func(t *testing.T) {
		var serial string
		eventually(t, "the slow plugin healthy on its current SVID", func() (bool, string) {
			cur, err := slowAuth.SVID()
			if err != nil {
				return false, err.Error()
			}
			serial = cur.Certificates[0].SerialNumber.Text(16)
			st := statusOf(t, slow)
			return st.Healthz == "ok", st.Healthz
		})
		renewed := func() {
			if s, err := slowAuth.SVID(); err == nil && s.Certificates[0].SerialNumber.Text(16) != serial {
				t.Skip("the SVID was renewed before the refusal was seen (a loaded machine)")
			}
		}
		if _, err := e.a.Policy.Revoke(ctx, "admin:uid=0", nil, []string{serial}, false, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, "an Encrypt refused by the deny-list", func() (bool, string) {
			renewed()
			_, err := slow.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "6"})
			return status.Code(err) == codes.PermissionDenied, fmt.Sprint(err)
		})
		before := e.pluginKMSCalls()
		st := statusOf(t, slow)
		renewed()
		said = append(said, st.Healthz)
		if !strings.HasPrefix(st.Healthz, "denied by the authority: ") || !strings.Contains(st.Healthz, "deny-list") || st.KeyId != "" {
			t.Fatalf("Status right after a refused Encrypt (health_ttl 1m): %+v", st)
		}
		if after := e.pluginKMSCalls(); after != before {
			t.Fatalf("that Status called the authority (%d KMS events, was %d)", after, before)
		}
		// The agent's next SVID ends it, without waiting out the minute.
		eventually(t, "the slow plugin healthy on its renewed SVID", func() (bool, string) {
			st := statusOf(t, slow)
			return st.Healthz == "ok", st.Healthz
		})
		if now, _ := slowAuth.SVID(); now == nil || now.Certificates[0].SerialNumber.Text(16) == serial {
			t.Fatal("healthy on the revoked serial")
		}
	})

	t.Run("only the configured server ID", func(t *testing.T) {
		// Another workload of the same trust domain, valid SVID.
		other, otherCalls := impostor(t, issued(t, e.a, e.a.ID("/ns/shop/sa/api")), e.a)
		// The Node API's very ID, signed by another CA of the same name.
		forger := authoritytest.New(t, authoritytest.WithTrustDomain(e.a.TD.Name()))
		forged, forgedCalls := impostor(t, issued(t, forger, serverID), e.a)
		for _, c := range []struct {
			name, addr string
			calls      *atomic.Int64
			want       string
		}{
			{"another SVID of the trust domain", other, otherCalls, "unexpected ID"},
			{"the server ID from another CA", forged, forgedCalls, "certificate signed by unknown authority"},
		} {
			t.Run(c.name, func(t *testing.T) {
				ikc, _, _ := e.pluginFor(t, c.addr, serverID)
				var st *kmsapi.StatusResponse
				eventually(t, "the plugin's SVID", func() (bool, string) {
					st = statusOf(t, ikc)
					return !strings.HasPrefix(st.Healthz, "no valid SVID: "), st.Healthz
				})
				said = append(said, st.Healthz)
				if st.Healthz == "ok" || st.KeyId != "" || !strings.HasPrefix(st.Healthz, "TLS handshake with the authority failed: ") || !strings.Contains(st.Healthz, c.want) {
					t.Fatalf("status against an impostor: %+v", st)
				}
				_, err := ikc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "4"})
				if err == nil {
					t.Fatal("encrypt through an impostor succeeded")
				}
				said = append(said, err.Error())
				if n := c.calls.Load(); n != 0 {
					t.Fatalf("%d calls reached the impostor", n)
				}
			})
		}
	})

	t.Run("evicted agent: access ends with the SVID", func(t *testing.T) {
		eventually(t, "the slow plugin healthy before the eviction", func() (bool, string) {
			st := statusOf(t, slow)
			return st.Healthz == "ok", st.Healthz
		})
		if _, _, err := e.a.Registry.EvictAgent(ctx, e.agentID, nil); err != nil {
			t.Fatal(err)
		}
		// The slow plugin learned "ok" less than an SVID lifetime ago: once
		// its SVID has expired, Status says so, asking nothing.
		eventually(t, "the slow plugin's SVID to expire", func() (bool, string) {
			_, err := slowAuth.SVID()
			return err != nil, ""
		})
		before := e.pluginKMSCalls()
		if st := statusOf(t, slow); !strings.HasPrefix(st.Healthz, "no valid SVID: ") || !strings.Contains(st.Healthz, "expired") || st.KeyId != "" {
			t.Fatalf("Status of the slow plugin once its SVID expired: %+v", st)
		}
		if after := e.pluginKMSCalls(); after != before {
			t.Fatalf("that Status called the authority (%d KMS events, was %d)", after, before)
		}
		eventually(t, "Status: no valid SVID (expired)", func() (bool, string) {
			st := statusOf(t, kc)
			said = append(said, st.Healthz)
			return strings.HasPrefix(st.Healthz, "no valid SVID: ") && strings.Contains(st.Healthz, "expired") && st.KeyId == "", st.Healthz
		})
		calls := len(e.a.Events(""))
		_, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "5"})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("encrypt with an expired SVID: %v", err)
		}
		said = append(said, err.Error())
		if n := len(e.a.Events("")); n != calls {
			t.Fatalf("a call with an expired SVID reached the authority (%d events, was %d)", n, calls)
		}
	})

	seen := map[string]bool{}
	for _, s := range said {
		if !seen[s] {
			seen[s] = true
			t.Logf("the apiserver saw: %s", s)
		}
	}
	// Nothing secret in what the apiserver or the logs saw.
	sv, _ := auth.src.GetX509SVID()
	var keyDER []byte
	if sv != nil {
		keyDER, _ = x509.MarshalPKCS8PrivateKey(sv.PrivateKey)
	}
	for _, s := range append(said, e.logs.String()) {
		low := strings.ToLower(s)
		if strings.Contains(s, string(seed)) || strings.Contains(low, hex.EncodeToString(seed)) || strings.Contains(s, "PRIVATE KEY") ||
			(len(keyDER) > 0 && strings.Contains(low, hex.EncodeToString(keyDER[len(keyDER)-32:]))) {
			t.Fatalf("secret material in %q", s)
		}
	}
	for _, ev := range e.a.Events("") {
		if strings.Contains(fmt.Sprint(ev), string(seed)) {
			t.Fatalf("seed in audit event %+v", ev)
		}
	}
}

// TestMTLSModeWithoutAgent: with no agent answering on the Workload API
// socket the plugin still serves, and Status says why it cannot work.
func TestMTLSModeWithoutAgent(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseConfig(fmt.Appendf(nil, "socket: %s/kms.sock\ncluster: c\nkey: k8s/etcd\nauthority:\n  node_api: 127.0.0.1:1\n  server_id: spiffe://td.example/ward/server\n  workload_api_socket: %s/agent.sock\n", dir, dir))
	if err != nil {
		t.Fatal(err)
	}
	src := WatchWorkloadAPI(cfg.Authority.WorkloadAPISocket)
	defer src.Close()
	auth, err := NodeAPIAuthorityFor(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	p := New(cfg, auth)
	r, err := p.Status(context.Background(), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Healthz, "no valid SVID: no X509-SVID yet from the Workload API at unix://"+dir+"/agent.sock") || r.KeyId != "" {
		t.Fatalf("status %+v", r)
	}
	_, err = p.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no X509-SVID yet") {
		t.Fatalf("encrypt: %v", err)
	}
}

// TestMTLSModeFailsOver: with node_api naming two authorities (two Node
// APIs over one store), the plugin in the mTLS mode keeps serving when the
// first one stops, is cut off by a partition that drops its packets
// (connections open, no answer: each attempt is bounded by half the
// call's timeout, or the first authority would take the whole call and
// every call would fail), or is cut off from the etcd the authorities
// share (it answers every call at once with Unavailable, as an HA
// authority whose lease lapsed does): its calls, and Status's round trips,
// go to the second. The agent has a Node API of its own, which stays up.
func TestMTLSModeFailsOver(t *testing.T) {
	const (
		stopped = "first authority stopped"
		cut     = "first authority cut off"
		noStore = "first authority cut off from its store"
	)
	for _, name := range []string{stopped, cut, noStore} {
		t.Run(name, func(t *testing.T) {
			e := newMTLSEnv(t)
			ctx := context.Background()
			var lost atomic.Bool
			var refused atomic.Int64 // calls the cut-off authority answered Unavailable
			first := e.serveNodeAPIWith(t, func() (<-chan struct{}, error) {
				if lost.Load() {
					refused.Add(1)
					return nil, errors.New("this authority is cut off from etcd (its lease was not renewed within the lease TTL): try another authority")
				}
				return nil, nil
			})
			second := e.serveNodeAPI(t)
			firstAddr := first.addr
			var link *netutil.Blackhole
			if name == cut {
				link = netutil.NewBlackhole(t, first.addr)
				firstAddr = link.Addr()
			}
			kc, _, _ := e.pluginFor(t, firstAddr+","+second.addr, nodeapi.ServerID(e.a.TD))
			eventually(t, "a healthy Status through the first authority", func() (bool, string) {
				st := statusOf(t, kc)
				return st.Healthz == "ok", st.Healthz
			})
			seed := []byte("0123456789abcdef0123456789abcdef")
			enc, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
			if err != nil {
				t.Fatal(err)
			}
			if first.accepted.Load() == 0 || second.accepted.Load() != 0 {
				t.Fatalf("before the failover: %d connections to the first authority, %d to the second; want the first only", first.accepted.Load(), second.accepted.Load())
			}

			switch name {
			case cut:
				link.Cut()
			case noStore:
				lost.Store(true)
			default:
				first.srv.Stop()
				if conn, err := net.DialTimeout("tcp", first.addr, time.Second); err == nil {
					conn.Close()
					t.Fatal("the first authority still accepts connections")
				}
			}
			// The plugin's own timeout (2 s) bounds each call; the loop
			// bounds the test, not the failover's speed.
			eventually(t, "an Encrypt through the second authority", func() (bool, string) {
				_, err := kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "2"})
				return err == nil, fmt.Sprint(err)
			})
			if second.accepted.Load() == 0 {
				t.Fatal("no connection reached the second authority")
			}
			if name == noStore && refused.Load() == 0 {
				t.Fatal("the cut-off authority was never asked: the failover was not tested")
			}
			// From now on every call and round trip goes through.
			for i := range 3 {
				if st := statusOf(t, kc); st.Healthz != "ok" || st.KeyId != "ward:k8s/etcd:1" {
					t.Fatalf("Status %d after the failover: %+v", i, st)
				}
				d, err := kc.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "3"})
				if err != nil || string(d.Plaintext) != string(seed) {
					t.Fatalf("decrypt %d after the failover: %v", i, err)
				}
			}
		})
	}
}
