package k8s

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// TestKMSPluginMTLSWithRealAPIServer runs `ward kms-plugin` in the mTLS
// mode under a real kube-apiserver, briefly (the admin-socket mode's test,
// TestKMSPluginWithRealAPIServer, covers rotation, sealing and rewrap,
// which do not depend on the mode): the plugin gets its SVID from a real
// `ward agent` and calls the workload KMS on the authority's Node API; the
// apiserver writes a Secret under ward's key_id, reads it back, and, after
// a restart (no DEK cache), reads it through the plugin's Decrypt. The
// authority's audit log names the plugin's SPIFFE ID as the caller.
func TestKMSPluginMTLSWithRealAPIServer(t *testing.T) {
	bin := kubeAPIServer(t)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	nodeAPI := freeAddr(t)
	a := startAuthority(t, filepath.Join(dir, "authority"), fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI))
	a.ward("", "key", "create", "k8s/etcd", "--classification", "confidential")
	const pluginID = "spiffe://k8s.example.org/k8s/kms-plugin/node-1"
	pol := filepath.Join(dir, "kms-plugin.cedar")
	if err := os.WriteFile(pol, []byte(`@id("kms-plugin-wraps-seeds")
permit(principal == Workload::"`+pluginID+`", action in [Action::"kms:encrypt", Action::"kms:decrypt"], resource == Key::"k8s/etcd");
`), 0o600); err != nil {
		t.Fatal(err)
	}
	a.ward("", "policy", "apply", pol)
	_, socket := startNodeAgent(t, a, dir, nodeAPI, "--spiffe-id", pluginID, "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	// --check (inside startPluginWith) waits a bounded while for the SVID.
	p := startPluginWith(t, a, dir, "k8s/etcd", "test-cluster", fmt.Sprintf("authority:\n  node_api: %s\n  server_id: spiffe://k8s.example.org/ward/server\n  workload_api_socket: %s\n", nodeAPI, socket))
	if !p.logs.Contains(`"mode":"mtls node_api`) {
		t.Fatalf("the plugin does not log its mode:\n%s", p.logs.String())
	}
	waitStatus(t, p.kmsClient(t), "a healthy plugin", func(h, id string) bool { return h == "ok" && id == "ward:k8s/etcd:1" })
	api := startAPIServer(t, bin, filepath.Join(dir, "apiserver"), etcd, p.socket)
	secrets := api.client.CoreV1().Secrets("default")
	ctx := context.Background()

	const marker = "plaintext-marker-mtls"
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "m1"}, Data: map[string][]byte{"password": []byte(marker)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ec, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	r, err := ec.Get(ctx, "/registry/secrets/default/m1")
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("etcd get: %v", err)
	}
	if v := r.Kvs[0].Value; !bytes.HasPrefix(v, []byte(storedPrefix)) || bytes.Contains(v, []byte(marker)) {
		t.Fatalf("stored as %.40q", v)
	}
	get := func() {
		t.Helper()
		s, err := secrets.Get(ctx, "m1", metav1.GetOptions{})
		if err != nil || string(s.Data["password"]) != marker {
			t.Fatalf("get: %v", err)
		}
	}
	get()
	api.restart()
	get()

	out := a.ward("", "audit", "tail", "-n", "5000", "--json")
	for _, want := range []string{`"actor":"` + pluginID + `"`, `"operation":"kms.decrypt"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the audit log lacks %s", want)
		}
	}
}
