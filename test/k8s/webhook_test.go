package k8s

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

const (
	webhookDNS   = "ward-webhook.ward-system.svc"
	classLabel   = "ward.dev/classification"
	webhookRules = `identities:
  - {namespace: payments, service_account: api, spiffe_id: spiffe://k8s.example.org/payments/api}
  - {namespace: payments-warn, service_account: api, spiffe_id: spiffe://k8s.example.org/payments-warn/api}
encrypted_storage_classes: [encrypted-ssd]
classifications:
  public: []
  internal: [workload-identity]
  confidential: [workload-identity, proxy, encrypted-storage]
  restricted: [workload-identity, proxy, encrypted-storage]
`
)

// webhookProc is a `ward webhook` child.
type webhookProc struct {
	t      testing.TB
	config string
	logs   *syncbuf.Buffer
	cmd    *exec.Cmd
}

func (w *webhookProc) start(mode string, cfg string) {
	w.t.Helper()
	if err := os.WriteFile(w.config, []byte(cfg+"mode: "+mode+"\n"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.logs = &syncbuf.Buffer{}
	w.cmd = exec.Command(wardBin, "webhook", "--config", w.config)
	w.cmd.Stdout, w.cmd.Stderr = w.logs, w.logs
	if err := w.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { stop(w.cmd) })
	deadline := time.Now().Add(60 * time.Second)
	for !w.logs.Contains("webhook: serving admission reviews") {
		if time.Now().After(deadline) || w.cmd.ProcessState != nil {
			w.t.Fatalf("ward webhook did not come up:\n%s", w.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// warnings collects the admission warnings the apiserver returns.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// TestWebhookWithRealAPIServer: a real kube-apiserver calls `ward webhook`
// (its certificate an X509-SVID from ward's CA through a real agent,
// verified against ward's bundle as the caBundle): compliant namespaces,
// pods and PVCs are admitted, each non-compliant one is refused with the
// rule and how to comply, warn mode admits with admission warnings, and
// with the webhook down the apiserver follows the failure policy (Fail
// refuses, Ignore admits).
func TestWebhookWithRealAPIServer(t *testing.T) {
	bin := kubeAPIServer(t)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	_, wh, bundle, port, baseCfg := startWebhookStack(t, dir, "enforce")

	api := startAPIServer(t, bin, filepath.Join(dir, "apiserver"), etcd, "")
	ctx := context.Background()
	caBundle, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	fail := admregv1.Fail
	none := admregv1.SideEffectClassNone
	url := func(path string) *string { u := "https://localhost:" + port + path; return &u }
	hook := func(name, path string, resources []string, ops []admregv1.OperationType, group string, sel *metav1.LabelSelector) admregv1.ValidatingWebhook {
		return admregv1.ValidatingWebhook{
			Name:                    name,
			ClientConfig:            admregv1.WebhookClientConfig{URL: url(path), CABundle: caBundle},
			Rules:                   []admregv1.RuleWithOperations{{Operations: ops, Rule: admregv1.Rule{APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: resources}}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector:       sel,
		}
	}
	whc := &admregv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "ward"}}
	whc.Webhooks = append(whc.Webhooks, hook("namespaces.ward.dev", "/validate", []string{"namespaces"},
		[]admregv1.OperationType{admregv1.Create, admregv1.Update}, "", &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system"}}}}))
	for _, class := range []string{"public", "internal", "confidential", "restricted"} {
		whc.Webhooks = append(whc.Webhooks, hook(class+".workloads.ward.dev", "/validate/"+class, []string{"pods", "persistentvolumeclaims"},
			[]admregv1.OperationType{admregv1.Create}, "", &metav1.LabelSelector{MatchLabels: map[string]string{classLabel: class}}))
	}
	regs := api.client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if _, err := regs.Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	nsObj := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	// The apiserver picks the configuration up asynchronously: wait until
	// an unlabelled namespace is refused.
	deadline := time.Now().Add(60 * time.Second)
	var nsErr error
	for i := 0; ; i++ {
		_, nsErr = api.client.CoreV1().Namespaces().Create(ctx, nsObj(fmt.Sprintf("unlabelled-%d", i), nil), metav1.CreateOptions{})
		if nsErr != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the apiserver never called the webhook")
		}
		time.Sleep(500 * time.Millisecond)
	}
	wantDenied := func(what string, err error, parts ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s admitted", what)
		}
		for _, p := range append([]string{"denied the request", "ward webhook"}, parts...) {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("%s refused with %q: lacks %q", what, err, p)
			}
		}
		t.Logf("%s refused: %v", what, err)
	}
	wantDenied("an unlabelled namespace", nsErr, "rule namespace-classification", "has no ward.dev/classification label", "To comply")
	_, err = api.client.CoreV1().Namespaces().Create(ctx, nsObj("shop", map[string]string{classLabel: "secret"}), metav1.CreateOptions{})
	wantDenied("a namespace of an unknown classification", err, `ward.dev/classification="secret" is not a classification`)
	for _, ns := range []string{"payments", "payments-warn"} {
		if _, err := api.client.CoreV1().Namespaces().Create(ctx, nsObj(ns, map[string]string{classLabel: "confidential"}), metav1.CreateOptions{}); err != nil {
			t.Fatalf("a classified namespace refused: %v", err)
		}
		// The service accounts exist (no controller manager makes "default").
		for _, sa := range []string{"default", "api"} {
			if _, err := api.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	podObj := func(name, sa string, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
			Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "example.org/app:1"}}}}
	}
	pvcObj := func(name string, class *string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: class, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	}
	ssd, standard := "encrypted-ssd", "standard"
	pods := api.client.CoreV1().Pods("payments")
	pvcs := api.client.CoreV1().PersistentVolumeClaims("payments")

	if _, err := pods.Create(ctx, podObj("good", "api", nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("compliant pod refused: %v", err)
	}
	if _, err := pvcs.Create(ctx, pvcObj("good", &ssd), metav1.CreateOptions{}); err != nil {
		t.Fatalf("compliant PVC refused: %v", err)
	}
	_, err = pods.Create(ctx, podObj("no-identity", "default", nil), metav1.CreateOptions{})
	wantDenied("a pod without a ward identity", err, "rule workload-identity", `service account "default", which maps to no ward identity`, "(api)")
	_, err = pods.Create(ctx, podObj("no-proxy", "api", map[string]string{"ward.dev/proxy": "disabled"}), metav1.CreateOptions{})
	wantDenied("a pod opting out of the proxy", err, "rule proxy", "remove the annotation")
	_, err = pvcs.Create(ctx, pvcObj("plain", &standard), metav1.CreateOptions{})
	wantDenied("a PVC on an unencrypted class", err, "rule encrypted-storage", `StorageClass "standard"`, "encrypted-ssd")
	_, err = pvcs.Create(ctx, pvcObj("default-class", nil), metav1.CreateOptions{})
	wantDenied("a PVC on the default class", err, "rule encrypted-storage", "names no StorageClass")

	// Warn mode: the same pod is admitted, with the rule as a warning.
	stop(wh.cmd)
	wh.start("warn", baseCfg)
	warnCfg := rest.CopyConfig(api.cfg)
	var got warnings
	warnCfg.WarningHandler = &got
	wc, err := kubernetes.NewForConfig(warnCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wc.CoreV1().Pods("payments-warn").Create(ctx, podObj("no-identity", "default", nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("warn mode refused: %v", err)
	}
	var w []string
	for _, m := range got.take() {
		if strings.Contains(m, "ward") {
			w = append(w, m)
		}
	}
	if len(w) != 1 || !strings.Contains(w[0], "warn mode, would deny") || !strings.Contains(w[0], "rule workload-identity") {
		t.Fatalf("warn mode warnings: %q", w)
	}
	t.Logf("warn mode admitted with the warning %q", w[0])
	if _, err := wc.CoreV1().Pods("payments-warn").Create(ctx, podObj("good", "api", nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("compliant pod in warn mode: %v", err)
	}
	for _, m := range got.take() {
		if strings.Contains(m, "ward") {
			t.Fatalf("compliant pod in warn mode warned: %q", m)
		}
	}

	// Outage: failurePolicy Fail refuses, Ignore admits.
	stop(wh.cmd)
	_, err = pods.Create(ctx, podObj("outage-fail", "api", nil), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("webhook down, failurePolicy Fail: %v", err)
	}
	t.Logf("webhook down, Fail: %v", err)
	cur, err := regs.Get(ctx, "ward", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ignore := admregv1.Ignore
	for i := range cur.Webhooks {
		cur.Webhooks[i].FailurePolicy = &ignore
	}
	if _, err := regs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		_, err = pods.Create(ctx, podObj(fmt.Sprintf("outage-ignore-%d", i), "default", nil), metav1.CreateOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook down, failurePolicy Ignore: still refused: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startNodeAgent starts a `ward agent` child on this "node" (agent
// spiffe://k8s.example.org/ward/agent/node-1, attested with a join token)
// after registering an entry under it (`ward entry create` with entryArgs);
// it returns ward's bundle file and the agent's Workload API socket.
func startNodeAgent(t testing.TB, a *authority, dir, nodeAPI string, entryArgs ...string) (bundle, socket string) {
	t.Helper()
	agentDir := filepath.Join(dir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle = filepath.Join(agentDir, "bundle.pem")
	a.ward("", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(a.ward("", "token", "create", "--agent-path", "node-1", "-q"))
	a.ward("", append([]string{"entry", "create", "--parent", "spiffe://k8s.example.org/ward/agent/node-1"}, entryArgs...)...)
	socket = filepath.Join(agentDir, "agent.sock")
	agentCfg := filepath.Join(agentDir, "agent.yaml")
	if err := os.WriteFile(agentCfg, []byte(fmt.Sprintf("trust_domain: k8s.example.org\nserver_address: %s\ntrust_bundle_path: %s\njoin_token: %s\nsocket_path: %s\ndata_dir: %s\nsync_interval: 500ms\nlog_level: warn\n",
		nodeAPI, bundle, token, socket, filepath.Join(agentDir, "data"))), 0o600); err != nil {
		t.Fatal(err)
	}
	agentLogs := &syncbuf.Buffer{}
	agent := exec.Command(wardBin, "agent", "--config", agentCfg)
	agent.Stdout, agent.Stderr = agentLogs, agentLogs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop(agent)
		if t.Failed() {
			t.Logf("agent logs:\n%s", agentLogs.String())
		}
	})
	return bundle, socket
}

// startWebhookStack starts an authority, a ward agent on this "node" and
// `ward webhook` (mode) serving the SVID of an entry for this uid with the
// Service's DNS name, and localhost, the name the tests dial (no cluster
// DNS here). The rules are checked against the authority's classification
// table. It returns ward's bundle file, the webhook's port and its
// configuration without the mode line.
func startWebhookStack(t testing.TB, dir, mode string) (a *authority, wh *webhookProc, bundle, port, baseCfg string) {
	t.Helper()
	nodeAPI := freeAddr(t)
	a = startAuthority(t, filepath.Join(dir, "authority"), fmt.Sprintf("identity:\n  node_api_address: %s\n", nodeAPI))

	// A ward agent on this "node", and an entry giving the webhook (this
	// uid) an SVID with the Service's DNS name; localhost too, the name
	// the test's apiserver dials (no cluster DNS here).
	bundle, socket := startNodeAgent(t, a, dir, nodeAPI, "--spiffe-id", "spiffe://k8s.example.org/ward-system/webhook",
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "--dns", webhookDNS, "--dns", "localhost")

	// The webhook: rules checked against the authority's classification table.
	whAddr := freeAddr(t)
	_, port, _ = net.SplitHostPort(whAddr)
	wh = &webhookProc{t: t, config: filepath.Join(dir, "webhook.yaml")}
	baseCfg = fmt.Sprintf("listen: %s\nworkload_api_socket: %s\ndns_name: %s\nauthority:\n  address: %s\n%s", whAddr, socket, webhookDNS, a.addr, webhookRules)
	wh.start(mode, baseCfg)
	return a, wh, bundle, port, baseCfg
}
