package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wardproject/ward/internal/shared/kubeapi"
)

// Bounds on what the apiserver may send.
const (
	listPage     = 250      // pods per LIST page
	maxListPage  = 64 << 20 // bytes of one LIST page
	maxWatchItem = 8 << 20  // bytes of one watch event (an object is at most ~1.5 MiB in etcd)
	maxPods      = 10000    // pods kept for one node (the kubelet runs ~110)
	watchTimeout = 5 * time.Minute
)

// pod is what the attestor keeps of a pod.
type pod struct {
	UID, Name, Namespace, ServiceAccount, NodeName string
	Labels                                         map[string]string
	Containers                                     []container
}

type container struct{ ID, Name, Image string }

// apiPod is the part of a v1 Pod decoded from the apiserver.
type apiPod struct {
	Metadata struct {
		UID             string            `json:"uid"`
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		ResourceVersion string            `json:"resourceVersion"`
		Labels          map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NodeName           string `json:"nodeName"`
		ServiceAccountName string `json:"serviceAccountName"`
	} `json:"spec"`
	Status struct {
		ContainerStatuses          []apiContainerStatus `json:"containerStatuses"`
		InitContainerStatuses      []apiContainerStatus `json:"initContainerStatuses"`
		EphemeralContainerStatuses []apiContainerStatus `json:"ephemeralContainerStatuses"`
	} `json:"status"`
}

type apiContainerStatus struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	ContainerID string `json:"containerID"`
}

func (p *apiPod) pod() pod {
	out := pod{UID: p.Metadata.UID, Name: p.Metadata.Name, Namespace: p.Metadata.Namespace,
		ServiceAccount: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, Labels: p.Metadata.Labels}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	for _, l := range [][]apiContainerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, c := range l {
			// "containerd://<id>", "docker://<id>", "cri-o://<id>".
			_, id, ok := strings.Cut(c.ContainerID, "://")
			if !ok || id == "" {
				continue
			}
			out.Containers = append(out.Containers, container{ID: id, Name: c.Name, Image: c.Image})
		}
	}
	return out
}

// Pods follows the pods bound to one node (a LIST, then a WATCH with the
// field selector spec.nodeName), keyed by UID.
type Pods struct {
	c    *kubeapi.Client
	node string
	log  *slog.Logger

	mu      sync.Mutex
	byUID   map[string]pod
	synced  bool
	changed chan struct{} // closed and replaced at every change
	lastErr error
}

// NewPods prepares a follower of node's pods; Run does the work.
func NewPods(c *kubeapi.Client, node string, log *slog.Logger) *Pods {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pods{c: c, node: node, log: log, byUID: map[string]pod{}, changed: make(chan struct{})}
}

// Run lists and watches until ctx ends, starting over (with backoff) on
// errors and with a fresh LIST when the watch's version expired.
func (p *Pods) Run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		rv, err := p.list(ctx)
		for err == nil && ctx.Err() == nil {
			rv, err = p.watch(ctx, rv)
		}
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.lastErr = err
		p.mu.Unlock()
		if errors.Is(err, errGone) {
			backoff = time.Second
			continue
		}
		p.log.Warn("k8s workload attestor: following the node's pods failed; retrying", "node", p.node, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

var errGone = errors.New("watch version expired (410 Gone)")

func (p *Pods) query() url.Values {
	return url.Values{"fieldSelector": {"spec.nodeName=" + p.node}}
}

// list replaces the cache with a full LIST and returns its version.
func (p *Pods) list(ctx context.Context) (string, error) {
	all := map[string]pod{}
	var rv, cont string
	for {
		q := p.query()
		q.Set("limit", fmt.Sprint(listPage))
		if cont != "" {
			q.Set("continue", cont)
		}
		var page struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
				Continue        string `json:"continue"`
			} `json:"metadata"`
			Items []apiPod `json:"items"`
		}
		if err := p.c.Do(ctx, http.MethodGet, "/api/v1/pods", q, nil, &page, maxListPage); err != nil {
			if kubeapi.IsStatus(err, http.StatusGone) {
				return "", errGone // the continue token expired
			}
			return "", fmt.Errorf("listing the pods of node %s: %w", p.node, err)
		}
		for i := range page.Items {
			if pd := page.Items[i].pod(); p.keep(pd) {
				all[pd.UID] = pd
			}
		}
		if len(all) > maxPods {
			return "", fmt.Errorf("node %s has more than %d pods", p.node, maxPods)
		}
		rv, cont = page.Metadata.ResourceVersion, page.Metadata.Continue
		if cont == "" {
			break
		}
	}
	p.mu.Lock()
	p.byUID, p.synced, p.lastErr = all, true, nil
	p.notifyLocked()
	p.mu.Unlock()
	return rv, nil
}

// keep: only pods of this node, with a UID (the field selector already
// says so; a misbehaving proxy in between does not get to add others).
func (p *Pods) keep(pd pod) bool { return pd.UID != "" && pd.NodeName == p.node }

// watch applies events from version rv until the watch ends; it returns
// the newest version seen.
func (p *Pods) watch(ctx context.Context, rv string) (string, error) {
	q := p.query()
	q.Set("watch", "true")
	q.Set("resourceVersion", rv)
	q.Set("allowWatchBookmarks", "true")
	q.Set("timeoutSeconds", fmt.Sprint(int(watchTimeout/time.Second)))
	wctx, cancel := context.WithTimeout(ctx, watchTimeout+30*time.Second)
	defer cancel()
	body, err := p.c.Stream(wctx, "/api/v1/pods", q)
	if err != nil {
		if kubeapi.IsStatus(err, http.StatusGone) {
			return "", errGone
		}
		return "", fmt.Errorf("watching the pods of node %s: %w", p.node, err)
	}
	defer body.Close()
	dec := kubeapi.NewEventDecoder(body, maxWatchItem)
	for {
		var ev struct {
			Type   string `json:"type"`
			Object struct {
				apiPod
				Code int `json:"code"` // an ERROR event's Status
			} `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil || wctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return rv, nil // the watch ended or broke off; go on from rv
			}
			return "", fmt.Errorf("watching the pods of node %s: %w", p.node, err)
		}
		obj := &ev.Object.apiPod
		switch ev.Type {
		case "ADDED", "MODIFIED", "DELETED":
			pd := obj.pod()
			p.mu.Lock()
			if ev.Type == "DELETED" {
				delete(p.byUID, pd.UID)
			} else if p.keep(pd) && (len(p.byUID) < maxPods || p.has(pd.UID)) {
				p.byUID[pd.UID] = pd
			}
			p.notifyLocked()
			p.mu.Unlock()
		case "BOOKMARK":
		case "ERROR":
			if ev.Object.Code == http.StatusGone {
				return "", errGone
			}
			return "", fmt.Errorf("watching the pods of node %s: the apiserver sent an error (code %d)", p.node, ev.Object.Code)
		default:
			return "", fmt.Errorf("watching the pods of node %s: unknown event type %.40q", p.node, ev.Type)
		}
		if v := obj.Metadata.ResourceVersion; v != "" {
			rv = v
		}
	}
}

func (p *Pods) has(uid string) bool { _, ok := p.byUID[uid]; return ok }

func (p *Pods) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Get returns the pod with uid, waiting up to wait for it to appear (a
// pod the kubelet just started may reach the watch after its first
// process calls).
func (p *Pods) Get(ctx context.Context, uid string, wait time.Duration) (pod, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		p.mu.Lock()
		pd, ok := p.byUID[uid]
		synced, lastErr, ch := p.synced, p.lastErr, p.changed
		p.mu.Unlock()
		if ok {
			return pd, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return pod{}, ctx.Err()
		case <-t.C:
			switch {
			case !synced && lastErr != nil:
				return pod{}, fmt.Errorf("the pods of node %s are not known yet: %v", p.node, lastErr)
			case !synced:
				return pod{}, fmt.Errorf("the pods of node %s are not known yet (the first LIST is still running)", p.node)
			}
			return pod{}, fmt.Errorf("pod %s is not bound to node %s (not in the apiserver's pods of this node)", uid, p.node)
		}
	}
}
