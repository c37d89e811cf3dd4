package k8s

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/kubeapi"
)

// fakeAPI serves LIST and WATCH of pods like the apiserver: the LIST with
// the node's pods, then watch events pushed by the test.
type fakeAPI struct {
	mu       sync.Mutex
	pods     []map[string]any
	events   chan string
	queries  []string
	goneOnce bool
}

func podJSON(uid, ns, name, sa, node string, labels map[string]string, statuses ...map[string]any) map[string]any {
	return map[string]any{
		"metadata": map[string]any{"uid": uid, "namespace": ns, "name": name, "labels": labels, "resourceVersion": "10"},
		"spec":     map[string]any{"nodeName": node, "serviceAccountName": sa},
		"status":   map[string]any{"containerStatuses": statuses},
	}
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.queries = append(f.queries, r.URL.RawQuery)
	gone := f.goneOnce
	f.goneOnce = false
	pods := f.pods
	f.mu.Unlock()
	if r.URL.Path != "/api/v1/pods" || r.Header.Get("Authorization") != "Bearer agent-token" {
		http.Error(w, `{"message":"no"}`, 403)
		return
	}
	if r.URL.Query().Get("watch") != "true" {
		json.NewEncoder(w).Encode(map[string]any{"metadata": map[string]any{"resourceVersion": "10"}, "items": pods})
		return
	}
	if gone {
		fmt.Fprintln(w, `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}`)
		return
	}
	w.(http.Flusher).Flush()
	for {
		select {
		case ev := <-f.events:
			fmt.Fprintln(w, ev)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
	}
}

func startFake(t *testing.T, f *fakeAPI) *kubeapi.Client {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca, tok := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	os.WriteFile(tok, []byte("agent-token"), 0o600)
	c, err := kubeapi.New(kubeapi.Config{URL: srv.URL, CAFile: ca, TokenFile: tok})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// procWith makes a fake /proc where this test's own PID has cgroup file
// contents (the pidfd checks see the real, live process).
func procWith(t *testing.T, cgroup string) (string, attest.Caller) {
	t.Helper()
	root := t.TempDir()
	pid := os.Getpid()
	d := filepath.Join(root, strconv.Itoa(pid))
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, attest.Caller{PID: int32(pid)}
}

func strs(s []attest.Selector) []string {
	var out []string
	for _, x := range s {
		out = append(out, x.String())
	}
	return out
}

// TestAttestPodFromCgroupAndWatch: the caller's cgroup names a pod; its
// selectors come from the apiserver's pod of this node (LIST, then pods
// added by the watch, waited for); a container named in the status adds
// its name and image; a host process gets no k8s selectors; a pod the
// apiserver does not place on this node gives an error (no identity); a
// deleted pod is forgotten; the field selector asks for this node only;
// an expired watch (410) lists again.
func TestAttestPodFromCgroupAndWatch(t *testing.T) {
	f := &fakeAPI{events: make(chan string, 10), pods: []map[string]any{
		podJSON(uid, "shop", "checkout-1", "checkout", "node-a", map[string]string{"app": "checkout", "tier": "web"},
			map[string]any{"name": "app", "image": "registry.example.org/checkout:1.2", "containerID": "containerd://" + cid}),
	}}
	pods := NewPods(startFake(t, f), "node-a", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pods.Run(ctx)

	root, caller := procWith(t, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidU+".slice/cri-containerd-"+cid+".scope\n")
	a := New(pods, WithProcRoot(root), WithWait(5*time.Second))
	got, err := a.Attest(ctx, caller)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"k8s:container-image:registry.example.org/checkout:1.2", "k8s:container-name:app", "k8s:node:node-a", "k8s:ns:shop",
		"k8s:pod-label:app:checkout", "k8s:pod-label:tier:web", "k8s:pod-name:checkout-1", "k8s:pod-uid:" + uid, "k8s:sa:checkout"}
	if !slices.Equal(strs(got), want) {
		t.Fatalf("selectors\n got %v\nwant %v", strs(got), want)
	}
	f.mu.Lock()
	q := f.queries[0]
	f.mu.Unlock()
	if !strings.Contains(q, "fieldSelector=spec.nodeName%3Dnode-a") {
		t.Fatalf("LIST query %q lacks the node's field selector", q)
	}

	// A host process: no k8s selectors, no error.
	root2, caller2 := procWith(t, "0::/system.slice/sshd.service\n")
	if got, err := New(pods, WithProcRoot(root2)).Attest(ctx, caller2); err != nil || len(got) != 0 {
		t.Fatalf("host process: %v %v", got, err)
	}

	// A pod the watch brings a moment after the process asks (default
	// service account).
	newUID := "7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d"
	root3, caller3 := procWith(t, "0::/kubepods/besteffort/pod"+newUID+"/"+cid2+"\n")
	go func() {
		time.Sleep(100 * time.Millisecond)
		b, _ := json.Marshal(map[string]any{"type": "ADDED", "object": podJSON(newUID, "jobs", "batch-1", "", "node-a", nil)})
		f.events <- string(b)
	}()
	got, err = New(pods, WithProcRoot(root3)).Attest(ctx, caller3)
	if err != nil || !slices.Contains(strs(got), "k8s:sa:default") || !slices.Contains(strs(got), "k8s:ns:jobs") {
		t.Fatalf("pod from the watch: %v %v", strs(got), err)
	}

	// A pod of another node (a cgroup path a process made up, or a watch
	// answer that is not this node's): no identity.
	b, _ := json.Marshal(map[string]any{"type": "ADDED", "object": podJSON("11111111-2222-4333-8444-555555555555", "shop", "elsewhere", "checkout", "node-b", nil)})
	f.events <- string(b)
	root4, caller4 := procWith(t, "0::/kubepods/pod11111111-2222-4333-8444-555555555555/"+cid2+"\n")
	if got, err := New(pods, WithProcRoot(root4), WithWait(300*time.Millisecond)).Attest(ctx, caller4); err == nil || !strings.Contains(err.Error(), "not bound to node node-a") {
		t.Fatalf("pod of another node: %v %v", strs(got), err)
	}

	// Deleted: forgotten.
	b, _ = json.Marshal(map[string]any{"type": "DELETED", "object": podJSON(newUID, "jobs", "batch-1", "", "node-a", nil)})
	f.events <- string(b)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := New(pods, WithProcRoot(root3), WithWait(50*time.Millisecond)).Attest(ctx, caller3)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a deleted pod still attests")
		}
	}

	// 410 Gone on the watch: a new LIST.
	f.mu.Lock()
	f.goneOnce = true
	f.mu.Unlock()
	b, _ = json.Marshal(map[string]any{"type": "BOOKMARK", "object": map[string]any{"metadata": map[string]any{"resourceVersion": "11"}}})
	f.events <- string(b)
	cancelWatch := func() { // end the current watch so the next one sees the 410
		f.events <- "not json"
	}
	cancelWatch()
	deadline = time.Now().Add(15 * time.Second)
	for {
		f.mu.Lock()
		lists := 0
		for _, q := range f.queries {
			if !strings.Contains(q, "watch=true") {
				lists++
			}
		}
		f.mu.Unlock()
		if lists >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new LIST after the watch expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAttestRefusesWhileUnsynced: before the first LIST, a pod process
// gets an error saying why, not an identity.
func TestAttestRefusesWhileUnsynced(t *testing.T) {
	f := &fakeAPI{events: make(chan string)}
	c := startFake(t, f)
	pods := NewPods(c, "node-a", nil) // never Run
	root, caller := procWith(t, "0::/kubepods/pod"+uid+"/"+cid+"\n")
	_, err := New(pods, WithProcRoot(root), WithWait(50*time.Millisecond)).Attest(context.Background(), caller)
	if err == nil || !strings.Contains(err.Error(), "not known yet") {
		t.Fatalf("unsynced: %v", err)
	}
	// Conflicting cgroup lines: an error.
	root, caller = procWith(t, "1:cpu:/kubepods/pod"+uid+"/"+cid+"\n0::/kubepods/pod7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d/"+cid+"\n")
	if _, err := New(pods, WithProcRoot(root)).Attest(context.Background(), caller); err == nil || !strings.Contains(err.Error(), "two pods") {
		t.Fatalf("conflicting lines: %v", err)
	}
	// A caller that is gone.
	if _, err := New(pods).Attest(context.Background(), attest.Caller{PID: 0}); err == nil {
		t.Fatal("no PID: no error")
	}
}

// TestAttestRefusesPodCgroupMadeInsideAContainer runs the cgroup spoof: a
// process of pod "attacker" whose container may write its own cgroup
// subtree (a delegated, writable cgroup mount) makes a child cgroup named
// like pod "vault" on the same node (and a container of it), moves itself
// there and calls the Workload API. It must get neither pod's identity.
func TestAttestRefusesPodCgroupMadeInsideAContainer(t *testing.T) {
	const victim = "7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d"
	f := &fakeAPI{events: make(chan string, 10), pods: []map[string]any{
		podJSON(uid, "tenant", "attacker", "default", "node-a", nil),
		podJSON(victim, "vault", "vault-0", "vault", "node-a", nil),
	}}
	pods := NewPods(startFake(t, f), "node-a", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pods.Run(ctx)
	for _, cg := range []string{
		"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid +
			".scope/kubepods-pod" + strings.ReplaceAll(victim, "-", "_") + ".slice/cri-containerd-" + cid2 + ".scope\n",
		"0::/kubepods/besteffort/pod" + uid + "/" + cid + "/pod" + victim + "/" + cid2 + "\n",
	} {
		root, caller := procWith(t, cg)
		got, err := New(pods, WithProcRoot(root), WithWait(5*time.Second)).Attest(ctx, caller)
		if err == nil {
			t.Fatalf("cgroup %q attested as %v", cg, strs(got))
		}
	}
}
