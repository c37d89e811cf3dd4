package k8s

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// fetchEnv makes the test binary a workload (see TestMain): it waits for a
// line on stdin (the test places it in a cgroup first), then fetches an
// X509-SVID from the Workload API socket named by the variable and prints
// "SVID <id>" or "ERR <message>".
const fetchEnv = "WARD_K8S_TEST_FETCH_SVID"

func fetchMain(socket string) {
	bufio.NewReader(os.Stdin).ReadString('\n')
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sv, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
		cancel()
		if err == nil {
			fmt.Println("SVID", sv.ID)
			return
		}
		if os.Getenv(fetchEnv+"_ONCE") != "" || time.Now().After(deadline) {
			fmt.Println("ERR", strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cgroup2Mount finds where cgroup v2 is mounted (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on a hybrid host).
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4]
		}
	}
	return ""
}

// workload runs the test binary as a workload; if cgroupDir is not empty
// it is placed there (cgroup.procs) before it asks for its SVID.
func workload(t *testing.T, socket, cgroupDir string, once bool) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fetchEnv+"="+socket)
	if once {
		cmd.Env = append(cmd.Env, fetchEnv+"_ONCE=1")
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	if cgroupDir != "" {
		if err := os.WriteFile(filepath.Join(cgroupDir, "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0o644); err != nil {
			t.Fatalf("placing the workload in %s: %v", cgroupDir, err)
		}
	}
	io.WriteString(stdin, "go\n")
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the workload did not finish: %s", out.String())
	}
	return strings.TrimSpace(out.String())
}

// TestPodIdentityWithRealAPIServer: an agent attests its node with its
// pod's projected service-account token (k8s_psat), which the authority
// validates with the real apiserver's TokenReview; a process placed in a
// cgroup v2 directory carrying a Pod's UID (the kubelet's systemd layout)
// gets the SVID of the entry selected by k8s:ns + k8s:sa from that Pod's
// spec, read through the agent's watch of the node's pods; a process
// outside gets nothing. Attacks on node attestation with real tokens are
// refused: another audience, a service account not allowed to be an
// agent, a token of a deleted pod (revoked), a token bound to no pod, and
// the agent's own token presented again (replay).
func TestPodIdentityWithRealAPIServer(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (cgroup placement); CI=true: refusing to skip")
		}
		t.Skip("needs root to place a process in a cgroup")
	}
	v2 := cgroup2Mount(t)
	if v2 == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no cgroup v2 mount in /proc/self/mountinfo; CI=true: refusing to skip")
		}
		t.Skip("no cgroup v2 mount")
	}
	bin := kubeAPIServer(t)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	api := startAPIServer(t, bin, filepath.Join(dir, "apiserver"), etcd, "")
	ctx := context.Background()
	kc := api.client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// The cluster: a node, the agent's service account and pod on it, a
	// workload pod on it (neither ever runs).
	node, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{})
	must(err)
	no := false
	mkPod := func(ns, name, sa string, labels map[string]string) *corev1.Pod {
		t.Helper()
		p, err := kc.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: sa, AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{{Name: "app", Image: "registry.example.org/" + name + ":1"}}}}, metav1.CreateOptions{})
		must(err)
		return p
	}
	for _, ns := range []string{"ward-system", "shop"} {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		must(err)
	}
	for _, sa := range [][2]string{{"ward-system", "ward-agent"}, {"ward-system", "intruder"}, {"shop", "checkout"}} {
		_, err := kc.CoreV1().ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{})
		must(err)
	}
	agentPod := mkPod("ward-system", "ward-agent-x1", "ward-agent", nil)
	checkout := mkPod("shop", "checkout-1", "checkout", map[string]string{"app": "checkout"})
	// token asks the TokenRequest API for a token of sa (bound to pod
	// unless nil) for audience.
	token := func(ns, sa string, pod *corev1.Pod, audience string) string {
		t.Helper()
		exp := int64(600)
		tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp}}
		if pod != nil {
			tr.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		r, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
		must(err)
		return r.Status.Token
	}
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		must(os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	agentToken := write("agent-token", token("ward-system", "ward-agent", agentPod, "ward:k8s.example.org"))
	// The authority's and the agent's own apiserver credentials: the
	// static admin token (AlwaysAllow here; docs/kubernetes.md lists the
	// RBAC they need in a real cluster).
	adminToken := write("admin-token", api.token)
	apiCA := filepath.Join(dir, "apiserver", "certs", "apiserver.crt")

	nodeAPI := freeAddr(t)
	a := startAuthority(t, filepath.Join(dir, "authority"), fmt.Sprintf(
		"identity:\n  node_api_address: %s\n  k8s_psat:\n    - cluster: test\n      apiserver: %s\n      ca_bundle: %s\n      token_file: %s\n      allowed_service_accounts: [ward-system:ward-agent]\n",
		nodeAPI, api.url, apiCA, adminToken))
	agentID := fmt.Sprintf("spiffe://k8s.example.org/ward/agent/k8s_psat/test/%s", node.UID)
	a.ward("", "entry", "create", "--spiffe-id", "spiffe://k8s.example.org/shop/checkout", "--parent", agentID,
		"--selector", "k8s:ns:shop", "--selector", "k8s:sa:checkout")

	agentDir := filepath.Join(dir, "agent")
	must(os.MkdirAll(agentDir, 0o700))
	bundle := filepath.Join(agentDir, "bundle.pem")
	a.ward("", "ca", "bundle", "-o", bundle)
	socket := filepath.Join(agentDir, "agent.sock")
	agentCfg := write("agent.yaml", fmt.Sprintf(`trust_domain: k8s.example.org
server_address: %s
trust_bundle_path: %s
k8s_psat:
  cluster: test
  token_path: %s
k8s_workload_attestor:
  node_name: node-a
  apiserver: %s
  ca_path: %s
  token_path: %s
socket_path: %s
policy_socket: none
data_dir: %s
sync_interval: 500ms
log_level: info
`, nodeAPI, bundle, agentToken, api.url, apiCA, adminToken, socket, filepath.Join(agentDir, "data")))
	agentLogs := &syncbuf.Buffer{}
	agent := exec.Command(wardBin, "agent", "--config", agentCfg)
	agent.Stdout, agent.Stderr = agentLogs, agentLogs
	must(agent.Start())
	t.Cleanup(func() { stop(agent) })
	deadline := time.Now().Add(60 * time.Second)
	for !agentLogs.Contains("node attested") {
		if time.Now().After(deadline) || agent.ProcessState != nil {
			t.Fatalf("the agent did not attest with its PSAT:\n%s\nauthority:\n%s", agentLogs.String(), a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !agentLogs.Contains(agentID) {
		t.Fatalf("the agent attested, but not as %s:\n%s", agentID, agentLogs.String())
	}
	out := a.ward("", "agent", "list")
	if !strings.Contains(out, agentID) || !strings.Contains(out, "k8s_psat") {
		t.Fatalf("ward agent list:\n%s", out)
	}

	// The workload: a process in the cgroup the kubelet (systemd driver)
	// would make for checkout-1's container.
	cid := "3f1e2d4c5b6a79880f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
	podSlice := filepath.Join(v2, "ward-test-kubepods.slice", "ward-test-kubepods-pod"+strings.ReplaceAll(string(checkout.UID), "-", "_")+".slice")
	scope := filepath.Join(podSlice, "cri-containerd-"+cid+".scope")
	must(os.MkdirAll(scope, 0o755))
	t.Cleanup(func() {
		for _, d := range []string{scope, podSlice, filepath.Dir(podSlice)} {
			for i := 0; i < 50; i++ { // the killed workload leaves the cgroup asynchronously
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	if got := workload(t, socket, scope, false); got != "SVID spiffe://k8s.example.org/shop/checkout" {
		t.Fatalf("the workload in checkout-1's cgroup got %q\nagent:\n%s", got, agentLogs.String())
	}
	// Outside the pod's cgroup: nothing (and no k8s selectors).
	got := workload(t, socket, "", true)
	if !strings.HasPrefix(got, "ERR") || !strings.Contains(got, "no identity issued") || strings.Contains(got, "k8s:") {
		t.Fatalf("a process outside the pod got %q", got)
	}

	// Attacks on node attestation, each with a token the real apiserver
	// issued.
	attest := func(tok string) error {
		t.Helper()
		td := spiffeid.RequireTrustDomainFromString("k8s.example.org")
		xb, err := x509bundle.Load(td, bundle)
		must(err)
		tc := tlsconfig.TLSClientConfig(xb, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/ward/server")))
		conn, err := grpc.NewClient(nodeAPI, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		must(err)
		defer conn.Close()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		must(err)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		stream, err := wardv1.NewNodeClient(conn).Attest(cctx)
		must(err)
		must(stream.Send(&wardv1.AttestRequest{Csr: csr, Step: &wardv1.AttestRequest_K8SPsat{K8SPsat: &wardv1.K8SPsatAttestation{Cluster: "test", Token: tok}}}))
		r, err := stream.Recv()
		if err == nil && r.GetSvid() == nil {
			err = errors.New("no SVID")
		}
		return err
	}
	refused := func(what, tok, msg string) {
		t.Helper()
		err := attest(tok)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), msg) {
			t.Fatalf("%s: %v, want PermissionDenied with %q", what, err, msg)
		}
	}
	refused("a token for another audience", token("ward-system", "ward-agent", agentPod, "vault"), "refused the token")
	// The default audience names the trust domain: a token projected for
	// another trust domain's authority (or for the old shared audience
	// ward) is refused when replayed to this one.
	refused("a token for another trust domain's authority", token("ward-system", "ward-agent", agentPod, "ward:other.example.org"), "refused the token")
	refused("a token for the old shared audience", token("ward-system", "ward-agent", agentPod, "ward"), "refused the token")
	intruderPod := mkPod("ward-system", "intruder-1", "intruder", nil)
	refused("a service account not allowed to be an agent", token("ward-system", "intruder", intruderPod, "ward:k8s.example.org"), "service account ward-system:intruder of cluster test may not attest agents")
	refused("a token bound to no pod", token("ward-system", "ward-agent", nil, "ward:k8s.example.org"), "not bound to a pod")
	agentTok, err := os.ReadFile(agentToken)
	must(err)
	refused("the agent's token again (replay, a second agent)", string(agentTok), "already attested agent "+agentID)
	// Revoked: the token of a pod that was deleted.
	oldPod := mkPod("ward-system", "ward-agent-old", "ward-agent", nil)
	oldTok := token("ward-system", "ward-agent", oldPod, "ward:k8s.example.org")
	must(kc.CoreV1().Pods("ward-system").Delete(ctx, oldPod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	deadline = time.Now().Add(20 * time.Second)
	for {
		err := attest(oldTok)
		if status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), "refused the token") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token of a deleted pod: %v, want refused", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The agent still serves: its SVID was not replaced by any of these.
	if got := workload(t, socket, scope, false); got != "SVID spiffe://k8s.example.org/shop/checkout" {
		t.Fatalf("after the attacks the workload got %q", got)
	}
	// The refusals are in the audit log.
	audit := a.ward("", "audit", "tail", "-n", "200", "--json")
	if n := len(regexp.MustCompile(`"agent.attest"[^\n]*"denied"|"denied"[^\n]*"agent.attest"`).FindAllString(audit, -1)); n < 5 {
		t.Errorf("%d denied agent.attest events in the audit log, want at least 5:\n%s", n, audit)
	}
}
