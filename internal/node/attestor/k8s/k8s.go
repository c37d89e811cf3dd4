// Package k8s is the Kubernetes workload attestor: it finds the pod of a
// Workload API caller from the caller's cgroup (/proc/<pid>/cgroup names
// the pod's UID and the container's ID) and describes it from the pod
// spec the apiserver holds (a watch of the pods bound to this node) with
// the selectors
//
//	k8s:ns:<namespace>           k8s:sa:<service account>
//	k8s:pod-name:<name>          k8s:pod-uid:<uid>
//	k8s:node:<node name>         k8s:pod-label:<key>:<value> (one per label)
//	k8s:container-name:<name>    k8s:container-image:<image> (once the pod's status names the container)
//
// A caller in no pod gets no k8s selectors (and no error: other attestors
// may still describe it). A caller in a pod the apiserver does not place
// on this node gets an error, so no identity. The agent must see the
// workloads' processes (hostPID) and read the host's /proc.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproject/ward/internal/shared/attest"
)

// Type is the selector type this attestor emits.
const Type = "k8s"

// DefaultWait is how long an attestation waits for a pod it does not know
// yet to arrive through the watch.
const DefaultWait = 5 * time.Second

// Attestor implements attest.Attestor for processes in pods.
type Attestor struct {
	pods     *Pods
	procRoot string
	wait     time.Duration
}

// Option configures an Attestor.
type Option func(*Attestor)

// WithProcRoot reads process information below root instead of /proc.
func WithProcRoot(root string) Option { return func(a *Attestor) { a.procRoot = root } }

// WithWait sets how long an attestation waits for an unknown pod.
func WithWait(d time.Duration) Option { return func(a *Attestor) { a.wait = d } }

// New returns an attestor over pods (whose Run the caller starts).
func New(pods *Pods, opts ...Option) *Attestor {
	a := &Attestor{pods: pods, procRoot: "/proc", wait: DefaultWait}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Attest implements attest.Attestor.
func (a *Attestor) Attest(ctx context.Context, c attest.Caller) ([]attest.Selector, error) {
	if c.PID <= 0 {
		return nil, errors.New("k8s attestor: caller has no PID (peer in another PID namespace? the agent needs hostPID)")
	}
	alive, done, err := pinned(c)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: %w", err)
	}
	defer done()
	if err := alive(); err != nil {
		return nil, fmt.Errorf("k8s attestor: pid %d has exited", c.PID)
	}
	data, err := readBounded(filepath.Join(a.procRoot, strconv.Itoa(int(c.PID)), "cgroup"), maxCgroupFile)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: pid %d: %w", c.PID, err)
	}
	// The cgroup read belongs to the caller only if it is still alive (a
	// PID reused in between would otherwise lend its pod).
	if err := alive(); err != nil {
		return nil, fmt.Errorf("k8s attestor: pid %d exited during attestation", c.PID)
	}
	uid, cid, err := ParseCgroup(data)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: pid %d: %w", c.PID, err)
	}
	if uid == "" {
		return nil, nil
	}
	pd, err := a.pods.Get(ctx, uid, a.wait)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: pid %d is in pod %s: %w", c.PID, uid, err)
	}
	return selectors(pd, cid), nil
}

// selectors describes pd (and its container cid, if its status names it).
func selectors(pd pod, cid string) []attest.Selector {
	sel := func(v string) attest.Selector { return attest.Selector{Type: Type, Value: v} }
	out := []attest.Selector{sel("ns:" + pd.Namespace), sel("sa:" + pd.ServiceAccount), sel("pod-name:" + pd.Name),
		sel("pod-uid:" + pd.UID), sel("node:" + pd.NodeName)}
	for k, v := range pd.Labels {
		out = append(out, sel("pod-label:"+k+":"+v))
	}
	if cid != "" {
		for _, c := range pd.Containers {
			if c.ID == cid {
				out = append(out, sel("container-name:"+c.Name), sel("container-image:"+c.Image))
				break
			}
		}
	}
	return attest.Normalize(out)
}

// pinned returns a check that the caller's process is still the one that
// connected (its pidfd), and a release.
func pinned(c attest.Caller) (alive func() error, done func(), err error) {
	if c.PIDFD != nil {
		rc, err := c.PIDFD.SyscallConn()
		if err != nil {
			return nil, nil, fmt.Errorf("pidfd of pid %d: %w", c.PID, err)
		}
		return func() error {
			var sigErr error
			if err := rc.Control(func(fd uintptr) { sigErr = unix.PidfdSendSignal(int(fd), 0, nil, 0) }); err != nil {
				return err
			}
			return sigErr
		}, func() {}, nil
	}
	fd, err := unix.PidfdOpen(int(c.PID), 0)
	if errors.Is(err, unix.ENOSYS) {
		return func() error { return nil }, func() {}, nil // kernel < 5.3
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open pidfd of pid %d: %w", c.PID, err)
	}
	return func() error { return unix.PidfdSendSignal(fd, 0, nil, 0) }, func() { unix.Close(fd) }, nil
}

func readBounded(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n {
		return nil, fmt.Errorf("%s is longer than %d bytes", path, n)
	}
	return b, nil
}
