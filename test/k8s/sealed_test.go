package k8s

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// TestKMSPluginSealedBeyondWriteTTL (WARD_K8S_LONG=1: about five minutes)
// keeps the authority sealed for longer than KMS v2 lets the apiserver
// write with a DEK seed whose plugin is unhealthy (3 minutes after the
// last healthy Status): reads of Secrets under the cached seed go on the
// whole time, writes are refused once the seed has expired (as KMS v2
// specifies: the apiserver needs a healthy Status to extend it), the
// plugin's Status says why all along, and after unseal writes work again
// without restarting anything.
func TestKMSPluginSealedBeyondWriteTTL(t *testing.T) {
	if os.Getenv("WARD_K8S_LONG") == "" {
		t.Skip("WARD_K8S_LONG unset: this test keeps the authority sealed for over 3 minutes")
	}
	bin := kubeAPIServer(t)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	a := startAuthority(t, filepath.Join(dir, "authority"))
	a.ward("", "key", "create", "k8s/etcd", "--classification", "confidential")
	p := startPlugin(t, a, dir, "k8s/etcd", "test-cluster")
	kc := p.kmsClient(t)
	api := startAPIServer(t, bin, filepath.Join(dir, "apiserver"), etcd, p.socket)
	secrets := api.client.CoreV1().Secrets("default")
	ctx := context.Background()
	put := func(name string) error {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"password": []byte("value-of-" + name)}}
		_, err := secrets.Create(ctx, s, metav1.CreateOptions{})
		return err
	}
	get := func(name string) {
		t.Helper()
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil || string(s.Data["password"]) != "value-of-"+name {
			t.Fatalf("get secret %s: %v (%q)", name, err, s.Data["password"])
		}
	}
	if err := put("before"); err != nil {
		t.Fatal(err)
	}
	get("before")

	a.seal()
	sealed := time.Now()
	waitStatus(t, kc, "the sealed authority", func(h, _ string) bool { return strings.HasPrefix(h, "authority sealed") })
	var refused error
	for i := 0; ; i++ {
		err := put(fmt.Sprintf("sealed-%d", i))
		get("before") // reads never stop
		if err != nil {
			refused = err
			break
		}
		if time.Since(sealed) > 6*time.Minute {
			t.Fatal("writes still accepted 6 minutes after the authority was sealed: the apiserver's DEK seed never expired")
		}
		time.Sleep(5 * time.Second)
	}
	t.Logf("writes refused %s after the seal: %v", time.Since(sealed).Round(time.Second), refused)
	if !strings.Contains(refused.Error(), "expired") {
		t.Fatalf("the refused write: %v, want the expired DEK seed", refused)
	}
	st := waitStatus(t, kc, "still sealed", func(h, _ string) bool { return h != "ok" })
	if !strings.HasPrefix(st.Healthz, "authority sealed") {
		t.Fatalf("status while writes are refused: %+v", st)
	}
	get("before")

	a.unseal()
	unsealed := time.Now()
	for i := 0; ; i++ {
		err := put(fmt.Sprintf("after-%d", i))
		if err == nil {
			get(fmt.Sprintf("after-%d", i))
			break
		}
		if time.Since(unsealed) > 3*time.Minute {
			t.Fatalf("writes still refused 3 minutes after unseal: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("writes accepted again %s after unseal", time.Since(unsealed).Round(time.Second))
	get("before")
}
