package k8s

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// storedPrefix starts every value the apiserver's KMS v2 provider named
// "ward" writes to etcd.
const storedPrefix = "k8s:enc:kms:v2:ward:"

// kubeAPIServer returns the real kube-apiserver binary: $WARD_KUBE_APISERVER,
// else the one scripts/kube-apiserver.sh builds (or finds in its cache).
// Without one the test is skipped with the reason, never in CI.
func kubeAPIServer(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("WARD_KUBE_APISERVER"); p != "" {
		return p
	}
	cmd := exec.Command("bash", filepath.Join("..", "..", "scripts", "kube-apiserver.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := fmt.Sprintf("cannot build kube-apiserver with scripts/kube-apiserver.sh (%v):\n%s", err, stderr.String())
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s\nCI=true: refusing to skip", msg)
		}
		t.Skip(msg)
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		t.Logf("%s", msg)
	}
	return strings.TrimSpace(string(out))
}

type apiServer struct {
	t      testing.TB
	bin    string
	args   []string
	url    string
	token  string
	logs   *syncbuf.Buffer
	cmd    *exec.Cmd
	client *kubernetes.Clientset
	cfg    *rest.Config
}

// startAPIServer runs kube-apiserver over etcd with an
// EncryptionConfiguration whose only writer is ward's plugin at socket
// (socket "": no encryption configuration).
func startAPIServer(t testing.TB, bin, dir string, etcd *etcdtest.Server, socket string) *apiServer {
	t.Helper()
	if socket == "" {
		return startAPIServerEncrypting(t, bin, dir, etcd, "")
	}
	// The EncryptionConfiguration deploy/ ships, with the test's socket.
	shipped, err := os.ReadFile(filepath.Join(deployDir, "kms-plugin", "encryption-configuration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const shippedEndpoint = "endpoint: unix:///var/run/ward/kms-plugin.sock"
	if !bytes.Contains(shipped, []byte(shippedEndpoint)) {
		t.Fatalf("deploy/kms-plugin/encryption-configuration.yaml lacks %q", shippedEndpoint)
	}
	return startAPIServerEncrypting(t, bin, dir, etcd, string(bytes.Replace(shipped, []byte(shippedEndpoint), []byte("endpoint: unix://"+socket), 1)))
}

// startAPIServerEncrypting runs kube-apiserver over etcd with the
// EncryptionConfiguration encryption ("": none).
func startAPIServerEncrypting(t testing.TB, bin, dir string, etcd *etcdtest.Server, encryption string) *apiServer {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o700))
	// Service-account signing key pair.
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	der, err := x509.MarshalECPrivateKey(sa)
	must(err)
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	must(err)
	saKey, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	must(os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600))
	must(os.WriteFile(saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600))
	token := "ward-test-token"
	tokens := filepath.Join(dir, "tokens.csv")
	must(os.WriteFile(tokens, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600))
	var encArgs []string
	if encryption != "" {
		enc := filepath.Join(dir, "encryption.yaml")
		must(os.WriteFile(enc, []byte(encryption), 0o600))
		encArgs = []string{"--encryption-provider-config=" + enc}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &apiServer{t: t, bin: bin, token: token, url: fmt.Sprintf("https://127.0.0.1:%d", port)}
	s.args = []string{
		"--etcd-servers=" + strings.Join(etcd.Endpoints(), ","),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--token-auth-file=" + tokens, "--authorization-mode=AlwaysAllow",
		"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/24",
		"--enable-priority-and-fairness=false", "--endpoint-reconciler-type=none", "--profiling=false",
	}
	s.args = append(s.args, encArgs...)
	s.start()
	cfg := &rest.Config{Host: s.url, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, Timeout: 30 * time.Second}
	s.cfg = cfg
	s.client, err = kubernetes.NewForConfig(cfg)
	must(err)
	return s
}

func (s *apiServer) start() {
	s.t.Helper()
	s.logs = &syncbuf.Buffer{}
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { stop(s.cmd) })
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for {
		req, _ := http.NewRequest("GET", s.url+"/readyz?verbose", nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		resp, err := hc.Do(req)
		if err == nil {
			b := new(bytes.Buffer)
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			last = b.String()
			if resp.StatusCode == 200 {
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) || s.cmd.ProcessState != nil {
			s.t.Fatalf("kube-apiserver not ready: %s\nlog tail:\n%s", last, tail(s.logs.String(), 4000))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (s *apiServer) restart() {
	s.t.Helper()
	stop(s.cmd)
	s.start()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestKMSPluginWithRealAPIServer: Secrets written through a real
// kube-apiserver are stored in etcd under ward's plugin (prefix, no
// plaintext) and read back; `ward key rotate` moves new writes to the new
// key version while old ones still read; a sealed authority makes the
// plugin unhealthy with the reason while reads of cached DEKs go on; it
// recovers after unseal; a restarted apiserver (empty DEK cache) reads
// objects under both versions through the plugin's Decrypt; rewriting
// `ward k8s rewrap` refuses to raise the key's minimum decrypt version
// while a Secret is under version 1, then moves all of them to version 2
// and raises it, and everything still reads.
func TestKMSPluginWithRealAPIServer(t *testing.T) {
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

	ec, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	// raw reads a Secret straight from etcd and checks it is ward's: the
	// KMS v2 prefix, no plaintext; it returns the key_id stored with it.
	raw := func(name, plaintext string) string {
		t.Helper()
		r, err := ec.Get(ctx, "/registry/secrets/default/"+name)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("etcd get %s: %v (%d keys)", name, err, len(r.Kvs))
		}
		v := r.Kvs[0].Value
		if !bytes.HasPrefix(v, []byte(storedPrefix)) {
			t.Fatalf("secret %s is stored as %.40q, want the prefix %q", name, v, storedPrefix)
		}
		if bytes.Contains(v, []byte(plaintext)) {
			t.Fatalf("secret %s: plaintext %q found in etcd", name, plaintext)
		}
		var o kmstypes.EncryptedObject
		if err := proto.Unmarshal(v[len(storedPrefix):], &o); err != nil {
			t.Fatalf("secret %s: stored object: %v", name, err)
		}
		if len(o.Annotations) != 0 {
			t.Fatalf("annotations stored: %v", o.Annotations)
		}
		return o.KeyID
	}
	put := func(name, plaintext string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"password": []byte(plaintext)}}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create secret %s: %v", name, err)
		}
	}
	get := func(name, plaintext string) {
		t.Helper()
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil || string(s.Data["password"]) != plaintext {
			t.Fatalf("get secret %s: %v (%q)", name, err, s.Data["password"])
		}
	}

	put("s1", "plaintext-marker-one")
	if id := raw("s1", "plaintext-marker-one"); id != "ward:k8s/etcd:1" {
		t.Fatalf("s1 under key_id %q", id)
	}
	get("s1", "plaintext-marker-one")

	// Rotation: the plugin's Status shows the new version; the apiserver
	// polls Status (about once a minute while healthy), makes a new DEK
	// seed under it, and new writes land under version 2.
	a.ward("", "key", "rotate", "k8s/etcd")
	waitStatus(t, kc, "key_id version 2", func(h, id string) bool { return h == "ok" && id == "ward:k8s/etcd:2" })
	deadline := time.Now().Add(3 * time.Minute)
	var v1Count int
	for i := 0; ; i++ {
		name := fmt.Sprintf("s2-%d", i)
		put(name, "plaintext-marker-two")
		if raw(name, "plaintext-marker-two") == "ward:k8s/etcd:2" {
			t.Logf("the apiserver wrote under version 2 after %d writes", i+1)
			v1Count = 1 + i // s1 and s2-0 .. s2-(i-1)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the apiserver never wrote under the rotated key version")
		}
		time.Sleep(2 * time.Second)
	}
	put("s2", "plaintext-marker-two")
	if id := raw("s2", "plaintext-marker-two"); id != "ward:k8s/etcd:2" {
		t.Fatalf("s2 under %q", id)
	}
	get("s1", "plaintext-marker-one")
	if id := raw("s1", "plaintext-marker-one"); id != "ward:k8s/etcd:1" {
		t.Fatalf("s1 changed to %q", id)
	}

	// Sealed: Status says so, with no key_id (so the apiserver does not
	// extend its seed); reads of cached DEKs go on, and so do writes with
	// the current DEK seed (KMS v2 keeps it until 3 minutes after the last
	// healthy Status; no call reaches the plugin for it;
	// TestKMSPluginSealedBeyondWriteTTL waits those 3 minutes out).
	a.seal()
	st := waitStatus(t, kc, "the sealed authority", func(h, _ string) bool { return h != "ok" })
	if !strings.HasPrefix(st.Healthz, "authority sealed") || st.KeyId != "" {
		t.Fatalf("sealed status: %+v", st)
	}
	get("s1", "plaintext-marker-one")
	get("s2", "plaintext-marker-two")
	put("s3", "plaintext-marker-three")
	if id := raw("s3", "plaintext-marker-three"); id != "ward:k8s/etcd:2" {
		t.Fatalf("s3 under %q", id)
	}

	// Unsealed: healthy again.
	a.unseal()
	waitStatus(t, kc, "recovery after unseal", func(h, id string) bool { return h == "ok" && id == "ward:k8s/etcd:2" })

	// A restarted apiserver has no DEK cache: reading objects under both
	// versions goes through the plugin's Decrypt.
	api.restart()
	get("s1", "plaintext-marker-one")
	get("s2", "plaintext-marker-two")
	get("s3", "plaintext-marker-three")
	put("s4", "plaintext-marker-four")
	if id := raw("s4", "plaintext-marker-four"); id != "ward:k8s/etcd:2" {
		t.Fatalf("s4 under %q", id)
	}
	get("s4", "plaintext-marker-four")

	// Migration with `ward k8s rewrap`: while s1 is under version 1, a
	// request to raise the key's minimum decrypt version is refused; the
	// rewrap rewrites what is stale through the apiserver until every
	// Secret in etcd is under version 2 and only then raises it; a
	// restarted apiserver (empty DEK cache, version 1 now refused by the
	// authority) still reads them all.
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(api.token), 0o600); err != nil {
		t.Fatal(err)
	}
	rewrapArgs := []string{"k8s", "rewrap", "--key", "k8s/etcd", "--apiserver", api.url, "--token-file", tokenFile,
		"--apiserver-ca", filepath.Join(dir, "apiserver", "certs", "apiserver.crt"),
		"--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--raise-min-decrypt-version", "--settle", "2s"}
	out, err := a.wardErr("", append(rewrapArgs, "--dry-run")...)
	if err == nil || !strings.Contains(out, fmt.Sprintf(" %d under ward:k8s/etcd:1;", v1Count)) ||
		!strings.Contains(err.Error(), fmt.Sprintf("refusing to raise the minimum decrypt version of k8s/etcd to 2: %d objects are not under ward:k8s/etcd:2", v1Count)) {
		t.Fatalf("dry run with objects under version 1: %v\n%s", err, out)
	}
	minDecrypt := func() string {
		m := regexp.MustCompile(`Min decrypt version:\s+(\d+)`).FindStringSubmatch(a.ward("", "key", "show", "k8s/etcd"))
		if m == nil {
			t.Fatal("ward key show prints no minimum decrypt version")
		}
		return m[1]
	}
	if v := minDecrypt(); v != "1" && v != "0" {
		t.Fatalf("raised anyway: minimum decrypt version %s", v)
	}
	out = a.ward("", rewrapArgs...)
	t.Logf("ward k8s rewrap:\n%s", out)
	if !strings.Contains(out, fmt.Sprintf("every object is under ward:k8s/etcd:2 (%d rewritten)", v1Count)) || !strings.Contains(out, "minimum decrypt version of k8s/etcd raised to 2") {
		t.Fatalf("rewrap:\n%s", out)
	}
	if v := minDecrypt(); v != "2" {
		t.Fatalf("after the rewrap, minimum decrypt version %s", v)
	}
	all, err := api.client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := ec.Get(ctx, "/registry/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != len(all.Items) || len(r.Kvs) < 5 {
		t.Fatalf("%d secrets in etcd, %d listed", len(r.Kvs), len(all.Items))
	}
	for _, kv := range r.Kvs {
		name := string(kv.Key[len("/registry/secrets/default/"):])
		if id := raw(name, "plaintext-marker"); id != "ward:k8s/etcd:2" {
			t.Fatalf("after the rewrap, %s is under %q", name, id)
		}
	}
	api.restart()
	for name, pt := range map[string]string{"s1": "plaintext-marker-one", "s2": "plaintext-marker-two", "s3": "plaintext-marker-three", "s4": "plaintext-marker-four"} {
		get(name, pt)
	}
	if got, err := secrets.List(ctx, metav1.ListOptions{}); err != nil || len(got.Items) != len(all.Items) {
		t.Fatalf("list after raising the minimum decrypt version: %v", err)
	}

	// Every call reached the authority as a KMS caller and was audited:
	// the log names the key and the context key (its value is HMACed),
	// and it verifies.
	out = a.ward("", "audit", "tail", "-n", "5000", "--json")
	for _, want := range []string{"k8s/etcd", ContextKeyForTest} {
		if !strings.Contains(out, want) {
			t.Errorf("the audit log lacks %q", want)
		}
	}
	a.ward("", "audit", "verify")
}

// ContextKeyForTest is the encryption-context key the plugin binds.
const ContextKeyForTest = "k8s-kms-plugin"
