// Package netns builds networks of Linux network namespaces for
// multi-cluster tests: each cluster (or node) is a namespace joined to a
// private hub namespace by a veth pair on one bridge, so test traffic never
// touches the host's own network, and a node's link can be taken down and
// up again (a partition). It needs root and iproute2; New skips the test
// with a clear message otherwise. Every namespace is deleted when the test
// ends.
package netns

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// seq makes names unique within the process; the pid across processes.
var seq atomic.Uint32

// sweepOnce removes, before a process creates its first network, the
// namespaces that test processes which no longer run left behind (a run
// killed by its timeout cannot clean up): a later process with the same pid
// would otherwise fail to create its namespaces.
var sweepOnce sync.Once

// nameRE matches the namespaces New and AddNode create: w<pid base 36>-<seq><node>.
var nameRE = regexp.MustCompile(`^w([0-9a-z]+)-[0-9]+`)

func sweepStale() {
	out, err := run("ip", "netns", "list")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := nameRE.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, err := strconv.ParseInt(m[1], 36, 64)
		if err != nil {
			continue
		}
		// Ours before we made any: a dead process's with our pid.
		if int(pid) != self {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				continue // its process still runs
			}
		}
		run("ip", "netns", "del", f[0])
	}
}

// Network is a hub namespace with a bridge; nodes attach to it.
type Network struct {
	t      testing.TB
	prefix string
	hub    string
	subnet int // 10.<subnet>.0.0/24

	mu    sync.Mutex
	nodes []*Node
}

// Node is one namespace on the network with address IP (10.x.0.N).
type Node struct {
	net   *Network
	Name  string // the namespace, usable with `ip netns exec`
	IP    string
	hubIf string
}

// Skip reports why multi-namespace tests cannot run here ("" if they can).
func Skip() string {
	if os.Geteuid() != 0 {
		return "needs root to create network namespaces (ip netns); CI runs it as root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs iproute2 (`ip`) to create network namespaces"
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return "needs nsenter (util-linux) to run processes in network namespaces"
	}
	return ""
}

// New creates a network (its hub namespace and bridge), or skips t.
func New(t testing.TB) *Network {
	t.Helper()
	if why := Skip(); why != "" {
		t.Skip(why)
	}
	sweepOnce.Do(sweepStale)
	n := seq.Add(1)
	id := fmt.Sprintf("w%s-%d", strconv.FormatInt(int64(os.Getpid()), 36), n)
	nw := &Network{t: t, prefix: id, hub: id + "hub", subnet: 100 + int((uint32(os.Getpid())+n)%100)}
	t.Cleanup(nw.destroy)
	nw.ip("netns", "add", nw.hub)
	nw.in(nw.hub, "ip", "link", "set", "lo", "up")
	nw.in(nw.hub, "ip", "link", "add", "br0", "type", "bridge")
	nw.in(nw.hub, "ip", "link", "set", "br0", "up")
	return nw
}

// AddNode creates a namespace attached to the hub, with loopback up and
// address 10.<subnet>.0.<index+1>.
func (nw *Network) AddNode(name string) *Node {
	nw.t.Helper()
	nw.mu.Lock()
	idx := len(nw.nodes) + 1
	nw.mu.Unlock()
	if idx > 250 {
		nw.t.Fatal("netns: at most 250 nodes per network")
	}
	nd := &Node{net: nw, Name: fmt.Sprintf("%s%s", nw.prefix, name), IP: fmt.Sprintf("10.%d.0.%d", nw.subnet, idx),
		hubIf: fmt.Sprintf("%sh%d", nw.prefix, idx)}
	if len(nd.hubIf) > 15 {
		nw.t.Fatalf("netns: interface name %q too long", nd.hubIf)
	}
	nw.ip("netns", "add", nd.Name)
	nw.mu.Lock()
	nw.nodes = append(nw.nodes, nd)
	nw.mu.Unlock()
	nodeIf := fmt.Sprintf("%sn%d", nw.prefix, idx)
	nw.ip("link", "add", nodeIf, "netns", nd.Name, "type", "veth", "peer", "name", nd.hubIf, "netns", nw.hub)
	nw.in(nw.hub, "ip", "link", "set", nd.hubIf, "master", "br0")
	nw.in(nw.hub, "ip", "link", "set", nd.hubIf, "up")
	nw.in(nd.Name, "ip", "link", "set", "lo", "up")
	nw.in(nd.Name, "ip", "link", "set", nodeIf, "name", "eth0")
	nw.in(nd.Name, "ip", "addr", "add", nd.IP+"/24", "dev", "eth0")
	nw.in(nd.Name, "ip", "link", "set", "eth0", "up")
	return nd
}

// Hub is the hub namespace as a Node (no address of its own): a Capture
// there sees every frame that crosses the shared link, and nothing that
// stays inside a node.
func (nw *Network) Hub() *Node { return &Node{net: nw, Name: nw.hub} }

// Command returns a command that runs in the node's namespace. With uid
// non-zero it runs as that uid and gid (no supplementary groups).
func (nd *Node) Command(uid uint32, name string, args ...string) *exec.Cmd {
	a := []string{"--net=/run/netns/" + nd.Name}
	if uid != 0 {
		a = append(a, fmt.Sprintf("--setuid=%d", uid), fmt.Sprintf("--setgid=%d", uid))
	}
	a = append(a, "--", name)
	return exec.Command("nsenter", append(a, args...)...)
}

// Run runs a command in the node's namespace and returns its output.
func (nd *Node) Run(name string, args ...string) (string, error) {
	out, err := nd.Command(0, name, args...).CombinedOutput()
	return string(out), err
}

// Partition takes the node's link down: nothing reaches it, it reaches
// nothing (its loopback still works).
func (nd *Node) Partition() { nd.net.in(nd.net.hub, "ip", "link", "set", nd.hubIf, "down") }

// Heal brings the node's link back up.
func (nd *Node) Heal() { nd.net.in(nd.net.hub, "ip", "link", "set", nd.hubIf, "up") }

// Addr is host:port on the node's address.
func (nd *Node) Addr(port int) string { return fmt.Sprintf("%s:%d", nd.IP, port) }

func (nw *Network) ip(args ...string) {
	nw.t.Helper()
	if out, err := run("ip", args...); err != nil {
		nw.t.Fatalf("netns: ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (nw *Network) in(ns string, name string, args ...string) {
	nw.t.Helper()
	if out, err := run("ip", append([]string{"netns", "exec", ns, name}, args...)...); err != nil {
		nw.t.Fatalf("netns: in %s: %s %s: %v\n%s", ns, name, strings.Join(args, " "), err, out)
	}
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return b.String(), err
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return b.String(), fmt.Errorf("timed out")
	}
}

// destroy deletes every namespace (their veth ends go with them).
func (nw *Network) destroy() {
	nw.mu.Lock()
	nodes := nw.nodes
	nw.mu.Unlock()
	for _, nd := range nodes {
		if out, err := run("ip", "netns", "del", nd.Name); err != nil {
			nw.t.Logf("netns: deleting %s: %v %s", nd.Name, err, out)
		}
	}
	if out, err := run("ip", "netns", "del", nw.hub); err != nil {
		nw.t.Logf("netns: deleting %s: %v %s", nw.hub, err, out)
	}
}
