package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestKMSPluginRecoversAfterAuthorityOutage runs a real `ward server` and
// two real `ward kms-plugin` processes beside it, one per mode (admin
// socket; mTLS to the Node API with its SVID from a real `ward agent`),
// then kills the authority (SIGKILL) and restarts it on the same state:
// while it is down (and, restarted, sealed) each plugin's Status is
// not-ok with the reason and carries no key_id; once it is unsealed, each
// plugin's Encrypt succeeds again on the connection it already has
// (reconnects at most 2 s apart, internal/shared/reconnect), Status is ok,
// and seeds wrapped before the outage open. The bounds are the test's,
// not a speed asserted.
func TestKMSPluginRecoversAfterAuthorityOutage(t *testing.T) {
	dir := t.TempDir()
	nodeAPI := netutil.FreeLoopbackAddr(t)
	s := StartServer(t, dir, WriteConfig(t, dir, fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI)))
	shares := s.InitAndUnseal()
	a := s.Addr
	MustWard(t, a, "", "key", "create", "k8s/etcd", "--classification", "confidential")

	// The mTLS mode's identity: an entry for this uid under node-1's agent,
	// and a policy letting only it use the key.
	const pluginID = "spiffe://e2e.example.org/k8s/kms-plugin/node-1"
	pub := PublicDir(t)
	bundle := filepath.Join(pub, "bundle.pem")
	MustWard(t, a, "", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "node-1", "-q"))
	MustWard(t, a, "", "entry", "create", "--spiffe-id", pluginID,
		"--parent", "spiffe://e2e.example.org/ward/agent/node-1", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	pol := filepath.Join(dir, "kms-plugin.cedar")
	if err := os.WriteFile(pol, []byte(`@id("kms-plugin-wraps-seeds")
permit(principal == Workload::"`+pluginID+`", action in [Action::"kms:encrypt", Action::"kms:decrypt"], resource == Key::"k8s/etcd");
`), 0o600); err != nil {
		t.Fatal(err)
	}
	MustWard(t, a, "", "policy", "apply", pol)
	ag := startAgentProc(t, pub, nodeAPI, bundle, token)
	ag.WaitStatus("the plugin's SVID", func(st AgentStatus) bool { return st.SVIDs == 1 })

	plugins := []*kmsPluginProc{
		startKMSPlugin(t, filepath.Join(dir, "admin-mode"), fmt.Sprintf("authority:\n  address: %s\n", a)),
		startKMSPlugin(t, filepath.Join(dir, "mtls-mode"), fmt.Sprintf("authority:\n  node_api: %s\n  server_id: spiffe://e2e.example.org/ward/server\n  workload_api_socket: %s\n", nodeAPI, ag.Socket)),
	}
	seed := []byte("0123456789abcdef0123456789abcdef")
	before := make([]*kmsapi.EncryptResponse, len(plugins))
	for i, p := range plugins {
		p.waitStatus(t, "healthy", func(st *kmsapi.StatusResponse) bool { return st.Healthz == "ok" && st.KeyId == "ward:k8s/etcd:1" })
		r, err := p.encrypt(seed)
		if err != nil {
			t.Fatalf("%s: encrypt before the outage: %v", p.name, err)
		}
		before[i] = r
	}

	s.Kill()
	for _, p := range plugins {
		p.waitStatus(t, "not-ok while the authority is down", func(st *kmsapi.StatusResponse) bool {
			return strings.HasPrefix(st.Healthz, "authority unreachable: ") && st.KeyId == ""
		})
		if _, err := p.encrypt(seed); err == nil {
			t.Fatalf("%s: encrypt succeeded with the authority down", p.name)
		}
	}

	s.Start()
	// Restarted, sealed: the admin socket answers and says so; the Node
	// API serves only once unsealed.
	plugins[0].waitStatus(t, "authority sealed", func(st *kmsapi.StatusResponse) bool {
		return strings.HasPrefix(st.Healthz, "authority sealed: ") && st.KeyId == ""
	})
	if st := plugins[1].status(t); st.Healthz == "ok" || st.KeyId != "" {
		t.Fatalf("%s: Status while the authority is sealed: %+v", plugins[1].name, st)
	}
	s.Unseal(shares[:3])
	unsealed := time.Now()
	for i, p := range plugins {
		p.until(t, "an Encrypt after the authority came back", func() error { _, err := p.encrypt(seed); return err })
		t.Logf("%s: first successful Encrypt %s after the unseal", p.name, time.Since(unsealed).Round(10*time.Millisecond))
		p.waitStatus(t, "healthy after the outage", func(st *kmsapi.StatusResponse) bool { return st.Healthz == "ok" && st.KeyId == "ward:k8s/etcd:1" })
		// Each call has the plugin's 2 s; on a loaded machine one may run
		// out (the apiserver retries too): the loop bounds the test only.
		p.until(t, "a seed wrapped before the outage to open", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			d, err := p.kms.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: before[i].Ciphertext, KeyId: before[i].KeyId, Uid: "after"})
			if err == nil && string(d.Plaintext) != string(seed) {
				t.Fatalf("%s: a seed wrapped before the outage opened to other bytes", p.name)
			}
			return err
		})
	}
}

// until calls f (bounded) until it succeeds.
func (p *kmsPluginProc) until(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s: %v\nplugin logs:\n%s", p.name, what, err, Tail(p.logs.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kmsPluginProc is a `ward kms-plugin` child and the apiserver's client of
// its socket.
type kmsPluginProc struct {
	name string
	logs *syncbuf.Buffer
	kms  kmsapi.KeyManagementServiceClient
}

// startKMSPlugin writes a configuration in dir (health_ttl 1s: Status
// follows the authority quickly) with the authority section given, and
// runs the plugin until the test ends.
func startKMSPlugin(t *testing.T, dir, authoritySection string) *kmsPluginProc {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "kms.sock")
	cfg := filepath.Join(dir, "kms-plugin.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "socket: %s\ncluster: e2e\nkey: k8s/etcd\nhealth_ttl: 1s\n%s", socket, authoritySection), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &kmsPluginProc{name: filepath.Base(dir), logs: &syncbuf.Buffer{}}
	cmd := exec.Command(WardBin, "kms-plugin", "--config", cfg)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		StopProcess(cmd)
		if t.Failed() {
			t.Logf("%s plugin logs:\n%s", p.name, Tail(p.logs.String(), 4000))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !p.logs.Contains("serving KMS v2") {
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("%s: kms-plugin did not come up:\n%s", p.name, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.kms = kmsapi.NewKeyManagementServiceClient(conn)
	return p
}

func (p *kmsPluginProc) encrypt(seed []byte) (*kmsapi.EncryptResponse, error) {
	// The apiserver gives a KMS call 3 s.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return p.kms.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "e2e"})
}

func (p *kmsPluginProc) status(t *testing.T) *kmsapi.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := p.kms.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("%s: Status: %v (the plugin answers Status even when unhealthy)", p.name, err)
	}
	return st
}

// waitStatus polls Status (bounded) until cond holds.
func (p *kmsPluginProc) waitStatus(t *testing.T, what string, cond func(*kmsapi.StatusResponse) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := p.status(t)
		if cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Status never %s; last: %+v", p.name, what, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
