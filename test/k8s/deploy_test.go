package k8s

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	authorityconfig "github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/integrations/k8s/kmsplugin"
	"github.com/wardproject/ward/internal/integrations/k8s/webhook"
	"github.com/wardproject/ward/internal/node/agent"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// deployDir holds the manifests (deploy/ at the repository's top).
var deployDir = filepath.Join("..", "..", "deploy")

// deployDocs reads every YAML document of every file under deploy/.
func deployDocs(t *testing.T) map[string][]*unstructured.Unstructured {
	t.Helper()
	out := map[string][]*unstructured.Unstructured{}
	err := filepath.WalkDir(deployDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(deployDir, path)
		dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var m map[string]any
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("deploy/%s: %v", rel, err)
			}
			if m != nil {
				out[rel] = append(out[rel], &unstructured.Unstructured{Object: m})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeployManifestsDryRun applies every manifest under deploy/ to a real
// kube-apiserver with server-side dry-run (the namespaces for real, so the
// objects in them can be checked) and fails on any error. ward's own
// configuration files inside them (ConfigMaps, the kms-plugin's file) pass
// their parsers; the EncryptionConfiguration is the one
// TestKMSPluginWithRealAPIServer starts the apiserver with.
func TestDeployManifestsDryRun(t *testing.T) {
	bin := kubeAPIServer(t)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	api := startAPIServer(t, bin, filepath.Join(dir, "apiserver"), etcd, "")
	ctx := context.Background()

	dc, err := discovery.NewDiscoveryClientForConfig(api.cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(api.cfg)
	if err != nil {
		t.Fatal(err)
	}
	// What the controller manager would have made: a static pod's
	// service account in kube-system.
	if _, err := api.client.CoreV1().ServiceAccounts("kube-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	docs := deployDocs(t)
	var files []string
	for f := range docs {
		files = append(files, f)
	}
	sort.Strings(files)
	kinds := map[string]int{}
	configs := map[string]bool{}
	apply := func(f string, o *unstructured.Unstructured, dryRun bool) {
		t.Helper()
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("deploy/%s: %s %s: %v", f, gvk, o.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			if o.GetNamespace() == "" {
				t.Fatalf("deploy/%s: %s %s has no namespace", f, gvk.Kind, o.GetName())
			}
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		opts := metav1.CreateOptions{FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := ri.Create(ctx, o, opts); err != nil {
			t.Errorf("deploy/%s: %s %s/%s: %v", f, gvk.Kind, o.GetNamespace(), o.GetName(), err)
			return
		}
		kinds[gvk.Kind]++
	}
	for _, f := range files {
		for _, o := range docs[f] {
			if o.GetKind() == "Namespace" {
				apply(f, o, false)
			}
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".config.yaml") {
			b, err := os.ReadFile(filepath.Join(deployDir, f))
			if err != nil {
				t.Fatal(err)
			}
			switch filepath.Base(f) {
			case "kms-plugin.config.yaml":
				var c *kmsplugin.Config
				if c, err = kmsplugin.ParseConfig(b); err == nil && c.Authority.MTLS() {
					err = errors.New("in the mTLS mode: this is the admin-socket variant")
				}
			case "kms-plugin-mtls.config.yaml":
				var c *kmsplugin.Config
				if c, err = kmsplugin.ParseConfig(b); err == nil && !c.Authority.MTLS() {
					err = errors.New("not in the mTLS mode (authority.node_api)")
				}
			default:
				t.Errorf("deploy/%s: no ward configuration parser for it", f)
			}
			if err != nil {
				t.Errorf("deploy/%s: %v", f, err)
			}
			configs[filepath.Base(f)] = true
			continue
		}
		for _, o := range docs[f] {
			switch o.GetKind() {
			case "Namespace":
				continue
			case "EncryptionConfiguration":
				// Not an API object: TestKMSPluginWithRealAPIServer runs
				// the apiserver with it.
				kinds["EncryptionConfiguration"]++
				continue
			case "ConfigMap":
				data, _, _ := unstructured.NestedStringMap(o.Object, "data")
				for k, v := range data {
					var err error
					switch k {
					case "ward.yaml":
						_, err = authorityconfig.Parse([]byte(v))
					case "agent.yaml":
						_, err = agent.ParseConfig([]byte(v))
					case "webhook.yaml":
						_, err = webhook.ParseConfig([]byte(v))
					default:
						continue
					}
					if err != nil {
						t.Errorf("deploy/%s: ConfigMap %s, %s: %v", f, o.GetName(), k, err)
					}
					configs[k] = true
				}
			}
			apply(f, o, true)
		}
	}
	checkLimitsAndPolicies(t, docs)
	t.Logf("applied (dry-run) from %d files: %v; ward configurations parsed: %v", len(files), kinds, configs)
	for _, k := range []string{"Namespace", "StatefulSet", "DaemonSet", "Deployment", "Service", "ValidatingWebhookConfiguration", "Pod", "EncryptionConfiguration"} {
		if kinds[k] == 0 {
			t.Errorf("no %s under deploy/", k)
		}
	}
	for _, c := range []string{"ward.yaml", "agent.yaml", "webhook.yaml", "kms-plugin.config.yaml", "kms-plugin-mtls.config.yaml"} {
		if !configs[c] {
			t.Errorf("no %s under deploy/", c)
		}
	}
}

// checkLimitsAndPolicies: every container of every workload under deploy/
// has a memory limit, and the webhook's pods are isolated by a
// NetworkPolicy: ingress only to the port they serve, no egress.
func checkLimitsAndPolicies(t *testing.T, docs map[string][]*unstructured.Unstructured) {
	t.Helper()
	var policies []*unstructured.Unstructured
	webhookPort := int64(0)
	var webhookLabels map[string]string
	for f, objs := range docs {
		for _, o := range objs {
			var podSpec []string
			switch o.GetKind() {
			case "Pod":
				podSpec = []string{"spec"}
			case "Deployment", "DaemonSet", "StatefulSet":
				podSpec = []string{"spec", "template", "spec"}
			case "NetworkPolicy":
				policies = append(policies, o)
				continue
			default:
				continue
			}
			containers, _, _ := unstructured.NestedSlice(o.Object, append(podSpec, "containers")...)
			if len(containers) == 0 {
				t.Errorf("deploy/%s: %s %s has no containers", f, o.GetKind(), o.GetName())
			}
			for _, c := range containers {
				cm, _ := c.(map[string]any)
				if mem, _, _ := unstructured.NestedString(cm, "resources", "limits", "memory"); mem == "" {
					t.Errorf("deploy/%s: %s %s, container %v: no memory limit", f, o.GetKind(), o.GetName(), cm["name"])
				}
			}
			if o.GetKind() == "Deployment" && o.GetName() == "ward-webhook" {
				webhookLabels, _, _ = unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "labels")
				ports, _, _ := unstructured.NestedSlice(containers[0].(map[string]any), "ports")
				if len(ports) == 1 {
					webhookPort = number(ports[0].(map[string]any)["containerPort"])
				}
			}
		}
	}
	if webhookPort == 0 || len(webhookLabels) == 0 {
		t.Fatalf("the ward-webhook Deployment: labels %v, one container port %d", webhookLabels, webhookPort)
	}
	found := false
	for _, p := range policies {
		sel, _, _ := unstructured.NestedStringMap(p.Object, "spec", "podSelector", "matchLabels")
		matches := len(sel) > 0
		for k, v := range sel {
			if webhookLabels[k] != v {
				matches = false
			}
		}
		if !matches || p.GetNamespace() != "ward-system" {
			continue
		}
		found = true
		types, _, _ := unstructured.NestedStringSlice(p.Object, "spec", "policyTypes")
		if !slices.Contains(types, "Ingress") || !slices.Contains(types, "Egress") {
			t.Errorf("NetworkPolicy %s: policyTypes %v, want Ingress and Egress", p.GetName(), types)
		}
		if egress, _, _ := unstructured.NestedSlice(p.Object, "spec", "egress"); len(egress) != 0 {
			t.Errorf("NetworkPolicy %s allows egress: %v", p.GetName(), egress)
		}
		ingress, _, _ := unstructured.NestedSlice(p.Object, "spec", "ingress")
		for _, r := range ingress {
			ports, _, _ := unstructured.NestedSlice(r.(map[string]any), "ports")
			if len(ports) == 0 {
				t.Errorf("NetworkPolicy %s: an ingress rule open on every port", p.GetName())
			}
			for _, pt := range ports {
				if n := number(pt.(map[string]any)["port"]); n != webhookPort {
					t.Errorf("NetworkPolicy %s: ingress to port %v, the webhook serves %d", p.GetName(), pt, webhookPort)
				}
			}
		}
		if len(ingress) == 0 {
			t.Errorf("NetworkPolicy %s admits nothing: the apiserver cannot call the webhook", p.GetName())
		}
	}
	if !found {
		t.Error("no NetworkPolicy in ward-system selects the webhook's pods")
	}
}

// number reads a YAML number however the decoder typed it (int64, float64).
func number(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	case int:
		return int64(n)
	}
	return -1
}
