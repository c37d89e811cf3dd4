package kmsplugin

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/wardproject/ward/internal/testutil/otheruid"
)

// envSocketClient makes the test binary a client of the plugin's socket
// (run as another uid by TestSocketRefusesOtherUIDs): it calls Status and
// Encrypt and prints what it got.
const envSocketClient = "WARD_TEST_KMS_PLUGIN_CLIENT"

func init() { otheruid.Child(envSocketClient, callPluginOnce) }

// callPluginOnce calls Status, then Encrypt, on the plugin's socket: "OK
// <healthz> <key_id>" or "ERR <code> <message>".
func callPluginOnce(sock string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "ERR dial " + err.Error()
	}
	defer conn.Close()
	kc := kmsapi.NewKeyManagementServiceClient(conn)
	st, err := kc.Status(ctx, &kmsapi.StatusRequest{})
	if err == nil {
		var enc *kmsapi.EncryptResponse
		if enc, err = kc.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef"), Uid: "attack"}); err == nil {
			return fmt.Sprintf("OK %s %s %d", st.Healthz, st.KeyId, len(enc.Ciphertext))
		}
	}
	s, _ := status.FromError(err)
	return fmt.Sprintf("ERR %s %s", s.Code(), s.Message())
}

// TestSocketRefusesOtherUIDs (attack): the plugin's socket is for the
// kube-apiserver (root, the plugin's own uid) only. Another local user,
// even with the directory open to everyone, cannot connect: not for
// Status (what the authority said, the key_id) nor to have seeds wrapped
// or unwrapped under the cluster's key; nothing reaches the authority. The
// plugin's own uid is served.
func TestSocketRefusesOtherUIDs(t *testing.T) {
	otheruid.Require(t)
	const nobody = otheruid.Nobody
	dir := otheruid.PublicDir(t, "ward-kms-plugin-sock-") // only the socket's own mode protects it
	bin := otheruid.CopyTestBinary(t, dir, "kmsplugin.test")
	sock := filepath.Join(dir, "kms.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	p, f, _ := newTestPlugin(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})

	if got := callPluginOnce(sock); !strings.HasPrefix(got, "OK ok ward:k8s/etcd:1 ") {
		t.Fatalf("the plugin's own uid: %q, want served", got)
	}
	e, d := f.calls()
	got := otheruid.Run(t, bin, nobody, envSocketClient+"="+sock)
	if !strings.HasPrefix(got, "ERR Unavailable ") || !strings.Contains(got, "permission denied") {
		t.Fatalf("uid %d on the plugin's socket: %q, want the connection refused (permission denied)", nobody, got)
	}
	if e2, d2 := f.calls(); e2 != e || d2 != d {
		t.Fatalf("uid %d's calls reached the authority (%d encrypts, %d decrypts; were %d, %d)", nobody, e2, d2, e, d)
	}
}
