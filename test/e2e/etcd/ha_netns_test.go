package etcd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/netns"
)

// haCluster is three `ward server` processes, each in its own network
// namespace, on a three-member etcd cluster (TLS), each member in its own
// namespace too: the authorities reach etcd over the namespaces' bridge,
// and one can be cut off from it (Partition).
type haCluster struct {
	t        *testing.T
	nw       *netns.Network
	nodeAPI  []string // each authority's Node API address
	etcd     *etcdtest.Cluster
	etcdNS   []*netns.Node
	authNS   []*netns.Node
	servers  []*e2e.Server
	leaseTTL time.Duration
}

func startHACluster(t *testing.T, leaseTTL time.Duration) *haCluster {
	t.Helper()
	nw := netns.New(t)
	h := &haCluster{t: t, nw: nw, leaseTTL: leaseTTL}
	var ips []string
	for i := range 3 {
		nd := nw.AddNode(fmt.Sprintf("e%d", i))
		h.etcdNS = append(h.etcdNS, nd)
		ips = append(ips, nd.IP)
	}
	for i := range 3 {
		h.authNS = append(h.authNS, nw.AddNode(fmt.Sprintf("a%d", i)))
	}
	h.etcd = etcdtest.StartCluster(t, 3, etcdtest.ClusterTLS(), etcdtest.ClusterHosts(ips...),
		etcdtest.ClusterCommand(func(i int, bin string, args ...string) *exec.Cmd { return h.etcdNS[i].Command(0, bin, args...) },
			func(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
				return func(ctx context.Context, network, addr string) (net.Conn, error) { return h.etcdNS[i].Dial(addr) }
			}))
	caFile, certFile, keyFile := h.etcd.ClientCertFiles()
	root := t.TempDir()
	var eps []string
	for _, e := range h.etcd.Endpoints() {
		eps = append(eps, fmt.Sprintf("%q", e))
	}
	for i := range 3 {
		dir := filepath.Join(root, fmt.Sprintf("a%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		extra := fmt.Sprintf(`storage:
  backend: etcd
  etcd:
    endpoints: [%s]
    ca_file: %s
    cert_file: %s
    key_file: %s
    lease_ttl: %s
    member_name: a%d
seal:
  type: keyfile
  key_file: %s
identity:
  node_api_address: %s
  max_jwt_svids_per_entry: 4096 # the load mints for one entry with a new audience every 50 ms
  max_jwt_svids_per_agent: 8192 # and so for its agent (default 1024)
`, strings.Join(eps, ", "), caFile, certFile, keyFile, leaseTTL, i, filepath.Join(root, "seal.key"), h.authNS[i].Addr(8443))
		h.nodeAPI = append(h.nodeAPI, h.authNS[i].Addr(8443))
		s := e2e.StartServerIn(t, h.authNS[i], dir, e2e.WriteConfig(t, dir, extra))
		if i == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := s.Client().Operator.Init(ctx, &wardv1.InitRequest{}) // the key-file seal unseals at once
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
		h.servers = append(h.servers, s)
	}
	return h
}

func (h *haCluster) addresses() string {
	var a []string
	for _, s := range h.servers {
		a = append(a, s.Addr)
	}
	return strings.Join(a, ",")
}

// leader returns the index of the authority every live one names as the
// elected leader, waiting (bounded) for one; skip is a dead authority.
func (h *haCluster) leader(skip ...int) (int, time.Time) {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		names := map[string]bool{}
		ok := true
		for i, s := range h.servers {
			if slices.Contains(skip, i) {
				continue
			}
			c, err := client.Dial(s.Addr)
			if err != nil {
				h.t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.Cluster.Status(ctx, &wardv1.ClusterStatusRequest{})
			cancel()
			c.Close()
			if err != nil || st.GetLeader().GetName() == "" {
				ok = false
				break
			}
			names[st.GetLeader().GetName()] = true
		}
		if ok && len(names) == 1 {
			for n := range names {
				var idx int
				fmt.Sscanf(n, "a%d", &idx)
				if !slices.Contains(skip, idx) {
					return idx, time.Now()
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("no leader agreed on by the live authorities (skipping %v)", skip)
	return -1, time.Time{}
}

// haLoad is a steady load of KMS calls and key rotations through one
// failover client over every authority.
type haLoad struct {
	c       *client.Client
	stop    chan struct{}
	wg      sync.WaitGroup
	calls   atomic.Int64
	signed  atomic.Int64 // JWT-SVIDs signed through the agent
	mu      sync.Mutex
	failed  []string // calls the client reported failed for good
	cts     [][]byte // acknowledged ciphertexts
	rotated []uint32 // versions acknowledged by rotations
}

func startHALoad(t *testing.T, addrs, agentSocket string, workers int) *haLoad {
	t.Helper()
	c, err := client.Dial(addrs, client.WithAttemptTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, k := range []string{"ha/data", "ha/rotated"} {
		if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: k, Classification: "internal"}); err != nil {
			t.Fatal(err)
		}
	}
	l := &haLoad{c: c, stop: make(chan struct{})}
	call := func(what string, f func(ctx context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := f(ctx); err != nil {
			l.mu.Lock()
			l.failed = append(l.failed, fmt.Sprintf("%s at %s: %v", what, time.Now().Format("15:04:05.000"), err))
			l.mu.Unlock()
		}
		l.calls.Add(1)
	}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				call("encrypt", func(ctx context.Context) error {
					r, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "ha/data", Plaintext: []byte(fmt.Sprintf("w%d-%d", w, n))})
					if err == nil {
						l.mu.Lock()
						l.cts = append(l.cts, r.Ciphertext)
						l.mu.Unlock()
					}
					return err
				})
				if n%5 == 4 {
					l.mu.Lock()
					ct := l.cts[rand.IntN(len(l.cts))]
					l.mu.Unlock()
					call("decrypt", func(ctx context.Context) error {
						_, err := c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct})
						return err
					})
				}
			}
		}()
	}
	if agentSocket != "" {
		l.wg.Add(1)
		go func() { // SVID signing through the agent: a new audience every 50 ms
			defer l.wg.Done()
			for n := 0; ; n++ {
				select {
				case <-l.stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				call("sign JWT-SVID", func(ctx context.Context) error {
					_, err := fetchJWT(ctx, agentSocket, fmt.Sprintf("ha-aud-%d", n))
					if err == nil {
						l.signed.Add(1)
					}
					return err
				})
			}
		}()
	}
	l.wg.Add(1)
	go func() { // a rotation every 300 ms: a non-idempotent admin call
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			call("rotate", func(ctx context.Context) error {
				k, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "ha/rotated"})
				if err == nil {
					l.mu.Lock()
					l.rotated = append(l.rotated, k.LatestVersion)
					l.mu.Unlock()
				}
				return err
			})
		}
	}()
	return l
}

func (l *haLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// TestHAOnEtcdUnderFaults is the proof of docs/ha.md with real processes:
// three authorities on a three-member etcd (TLS), a steady load of KMS
// calls and rotations through the failover client, and faults: SIGKILL of
// the leader, SIGKILL of an etcd member, an authority cut off from etcd.
// No call fails for good, no rotation is made twice or lost, every
// ciphertext still decrypts, and `ward audit verify` passes on every
// authority. WARD_HA_PHASE (default 3s) sets how long the load runs
// between faults (bench/ha runs it longer).
func TestHAOnEtcdUnderFaults(t *testing.T) {
	phase := 3 * time.Second
	if v := os.Getenv("WARD_HA_PHASE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WARD_HA_PHASE: %v", err)
		}
		phase = d
	}
	const ttl = 3 * time.Second
	h := startHACluster(t, ttl)
	first, _ := h.leader()
	load := startHALoad(t, h.addresses(), h.startHAAgent(), 4)
	time.Sleep(phase)

	// 1. SIGKILL the leader authority: another takes over.
	killed := time.Now()
	h.servers[first].Kill()
	second, at := h.leader(first)
	t.Logf("leader a%d SIGKILLed; a%d leads %v later (lease TTL %v)", first, second, at.Sub(killed).Round(time.Millisecond), ttl)
	time.Sleep(phase)

	// 2. SIGKILL an etcd member (two of three keep quorum).
	h.etcd.Kill(0)
	t.Log("etcd member m0 SIGKILLed")
	time.Sleep(phase)

	// 3. Cut the current leader off from etcd: it stops leading within
	// its lease, the other live authority takes over, clients move on.
	h.authNS[second].Partition()
	t.Logf("authority a%d partitioned (its link is down: no etcd, no agent)", second)
	time.Sleep(2*ttl + phase)
	third := 3 - first - second
	if l, _ := h.leader(first, second); l != third {
		t.Fatalf("a%d should lead while a%d is cut off", third, second)
	}
	h.authNS[second].Heal()
	t.Logf("authority a%d healed", second)
	// The killed authority comes back (it auto-unseals and rejoins).
	h.servers[first].Start()
	time.Sleep(phase)
	load.finish()

	load.mu.Lock()
	defer load.mu.Unlock()
	t.Logf("%d calls, %d ciphertexts, %d rotations acknowledged, %d JWT-SVIDs signed through the agent", load.calls.Load(), len(load.cts), len(load.rotated), load.signed.Load())
	if load.signed.Load() == 0 {
		t.Fatal("no JWT-SVID was signed through the agent")
	}
	if len(load.failed) > 0 {
		t.Fatalf("%d calls failed for good:\n%s", len(load.failed), strings.Join(load.failed[:min(len(load.failed), 20)], "\n"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Every acknowledged rotation made exactly one version: the answers
	// are 2, 3, ... without gap or repeat, and the key has no more.
	sorted := slices.Clone(load.rotated)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for i, v := range sorted {
		if v != uint32(i+2) {
			t.Fatalf("rotation answers %v: want 2..%d, each once (a rotation made twice or lost)", sorted, len(sorted)+1)
		}
	}
	k, err := load.c.Keys.GetKey(ctx, &wardv1.GetKeyRequest{Name: "ha/rotated"})
	if err != nil {
		t.Fatal(err)
	}
	if k.LatestVersion != uint32(len(sorted)+1) {
		t.Fatalf("key has version %d after %d acknowledged rotations: a retried rotation rotated twice", k.LatestVersion, len(sorted))
	}
	// No acknowledged version or ciphertext was lost.
	for i, ct := range load.cts {
		if i%7 != 0 && i != len(load.cts)-1 {
			continue
		}
		if _, err := load.c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct}); err != nil {
			t.Fatalf("acknowledged ciphertext %d no longer decrypts: %v", i, err)
		}
	}
	// One audit log, verified on every authority.
	for i, s := range h.servers {
		r := e2e.Ward(t, s.Addr, "", "audit", "verify")
		if r.Code != 0 {
			t.Fatalf("ward audit verify on a%d: exit %d\n%s%s\nlogs:\n%s", i, r.Code, r.Stdout, r.Stderr, e2e.Tail(s.Logs.String(), 6000))
		}
		t.Logf("a%d: %s", i, strings.TrimSpace(r.Stdout))
	}
}

// startHAAgent runs `ward agent` in its own namespace with every
// authority's Node API in server_address, and registers the test process
// (uid 0) as a workload under it; it returns the Workload API socket once
// a JWT-SVID can be fetched through it.
func (h *haCluster) startHAAgent() string {
	t := h.t
	t.Helper()
	a := h.servers[0].Addr
	pub := t.TempDir()
	bundle := filepath.Join(pub, "bundle.pem")
	e2e.MustWard(t, a, "", "ca", "bundle", "-o", bundle)
	token := strings.TrimSpace(e2e.MustWard(t, a, "", "token", "create", "--ttl", "10m", "--agent-path", "ha-node", "-q"))
	e2e.MustWard(t, a, "", "entry", "create", "--spiffe-id", "spiffe://e2e.example.org/e2e/ha-load",
		"--parent", "spiffe://e2e.example.org/ward/agent/ha-node", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	ag := e2e.StartAgentProcIn(t, h.nw.AddNode("g"), "e2e.example.org", pub, strings.Join(h.nodeAPI, ","), bundle, token)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := fetchJWT(ctx, ag.Socket, "ha-ready")
		cancel()
		if err == nil {
			return ag.Socket
		}
		if time.Now().After(deadline) {
			t.Fatalf("no JWT-SVID through the agent: %v\nagent logs:\n%s", err, e2e.Tail(ag.Logs.String(), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fetchJWT asks the Workload API at socket for a JWT-SVID for aud: with a
// new audience each time, the agent has it signed by an authority.
func fetchJWT(ctx context.Context, socket, aud string) (string, error) {
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return "", err
	}
	defer c.Close()
	svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
	if err != nil {
		return "", err
	}
	return svid.Marshal(), nil
}
