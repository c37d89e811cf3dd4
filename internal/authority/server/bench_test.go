package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/integrations/k8s/kmsplugin"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

func benchAuthority(b *testing.B) *client.Client {
	_, c := benchServer(b)
	return c
}

func benchServer(b *testing.B) (*Server, *client.Client) {
	b.Helper()
	TuneGC() // as `ward server` runs (GOGC=100 in the environment measures Go's default)
	cfg := baseConfig(filepath.Join(b.TempDir(), "a"))
	srv, c := startB(b, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "bench", Classification: "confidential"}); err != nil {
		b.Fatal(err)
	}
	return srv, c
}

// BenchmarkAPIDataKeyBatch measures data keys per second through the
// local admin API with batches of 1000 (one audit event per batch).
func BenchmarkAPIDataKeyBatch(b *testing.B) {
	c := benchAuthority(b)
	ctx := context.Background()
	const n = 1000
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := c.KMS.BatchGenerateDataKey(ctx, &wardv1.BatchGenerateDataKeyRequest{Key: "bench", Count: n, WrappedOnly: true})
			if err != nil || len(r.Keys) != n {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkAPIEncryptUnary measures single encrypt calls through the API
// (one audit event each, group-committed).
func BenchmarkAPIEncryptUnary(b *testing.B) {
	c := benchAuthority(b)
	ctx := context.Background()
	pt := make([]byte, 32)
	b.ResetTimer()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "bench", Plaintext: pt}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkAuditAppendBbolt measures audit appends on the real path: the
// barrier (AES-GCM per record) over bbolt with an fsync per group commit,
// from 256 concurrent callers.
func BenchmarkAuditAppendBbolt(b *testing.B) {
	cfg := baseConfig(filepath.Join(b.TempDir(), "a"))
	srv, c := startB(b, cfg)
	ctx := context.Background()
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		b.Fatal(err)
	}
	st, err := srv.state()
	if err != nil {
		b.Fatal(err)
	}
	ev := srv.event(reqctx.Caller{Actor: "bench", RequestID: "r"}, "kms.encrypt", "ok", "")
	b.SetParallelism(128)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := st.audit.Append(ctx, ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAPIEncryptUnaryCallers measures single encrypt calls through the
// real admin socket (gRPC over the unix socket, one audit event each, group
// committed to bbolt with fsync) from 1, 8 and 64 concurrent callers, and
// reports throughput, the p50/p99 latency of one call and how many events
// shared a commit.
func BenchmarkAPIEncryptUnaryCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	benchCallers(b, func(_ *testing.B, _ *Server, c *client.Client, _ *unsealedState) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.KMS.Encrypt(ctx, req)
			return err
		}
	})
}

// noopKMS answers Encrypt at once with a canned ciphertext of the real
// size: the gRPC stack alone.
type noopKMS struct {
	wardv1.UnimplementedKMSServer
	resp *wardv1.EncryptResponse
}

func (n *noopKMS) Encrypt(context.Context, *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	return n.resp, nil
}

// BenchmarkAPINoopUnaryCallers is the ceiling of the unary API on this
// machine: the same request and reply as BenchmarkAPIEncryptUnaryCallers
// through the same gRPC stack (admin socket credentials, interceptors,
// limits; client and server in one process sharing the cores, as there),
// but the method does nothing: no KMS, no audit. Audited encrypt ÷ this is
// how much of what the stack itself can carry the KMS reaches.
func BenchmarkAPINoopUnaryCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	benchCallers(b, func(b *testing.B, srv *Server, c *client.Client, _ *unsealedState) func(context.Context) error {
		ct, err := c.KMS.Encrypt(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		nc := noopServer(b, srv, &noopKMS{resp: ct})
		return func(ctx context.Context) error {
			r, err := nc.KMS.Encrypt(ctx, req)
			if err == nil && len(r.Ciphertext) == 0 {
				err = fmt.Errorf("empty reply")
			}
			return err
		}
	})
}

// groupedKMS answers Encrypt like noopKMS, but only after a stand-in for
// the audit group commit: callers queue, and one goroutine releases
// everyone queued every wait (no CPU spent meanwhile), as the committer
// releases a group after its fsync.
type groupedKMS struct {
	wardv1.UnimplementedKMSServer
	resp *wardv1.EncryptResponse
	wait time.Duration
	mu   sync.Mutex
	q    []chan struct{}
	wake chan struct{}
}

func (g *groupedKMS) run() {
	for range g.wake {
		time.Sleep(g.wait)
		g.mu.Lock()
		q := g.q
		g.q = nil
		g.mu.Unlock()
		for _, c := range q {
			close(c)
		}
	}
}

func (g *groupedKMS) Encrypt(ctx context.Context, _ *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	c := make(chan struct{})
	g.mu.Lock()
	g.q = append(g.q, c)
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	select {
	case <-c:
		return g.resp, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// BenchmarkAPIGroupedNoopUnaryCallers is BenchmarkAPINoopUnaryCallers with
// handlers that wait as audited ones do: in groups released together every
// millisecond, without the KMS or the audit log's CPU. Its cpu-µs/op beside
// the no-op's is what waiting for a group commit costs the gRPC stack
// (goroutines parked and woken in bursts, fewer calls per read and write);
// the rest of BenchmarkAPIEncryptUnaryCallers's cost over it is the
// encrypt, its audit event and its share of the commit.
func BenchmarkAPIGroupedNoopUnaryCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	benchCallers(b, func(b *testing.B, srv *Server, c *client.Client, _ *unsealedState) func(context.Context) error {
		ct, err := c.KMS.Encrypt(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		g := &groupedKMS{resp: ct, wait: time.Millisecond, wake: make(chan struct{}, 1)}
		done := make(chan struct{})
		go func() { g.run(); close(done) }()
		b.Cleanup(func() { close(g.wake); <-done })
		nc := noopServer(b, srv, g)
		return func(ctx context.Context) error {
			r, err := nc.KMS.Encrypt(ctx, req)
			if err == nil && len(r.Ciphertext) == 0 {
				err = fmt.Errorf("empty reply")
			}
			return err
		}
	})
}

// auditedNoopKMS answers Encrypt with a canned ciphertext of the real
// size after appending the event a real encrypt appends (same operation,
// key, version, actor and request id) to the authority's own audit log:
// the real group commit and committer, without the KMS.
type auditedNoopKMS struct {
	wardv1.UnimplementedKMSServer
	resp *wardv1.EncryptResponse
	log  *audit.Log
}

func (n *auditedNoopKMS) Encrypt(ctx context.Context, r *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	ev := audit.NewEvent(ctx, "kms.encrypt", audit.ResultOK)
	ev.Key, ev.KeyVersion, ev.Count = r.Key, n.resp.KeyVersion, 1
	if _, err := n.log.Append(ctx, ev); err != nil {
		return nil, err
	}
	return n.resp, nil
}

// BenchmarkAPIAuditedNoopUnaryCallers is BenchmarkAPIEncryptUnaryCallers
// without the KMS: the same request and reply sizes through the same gRPC
// stack, each call appending its event to the same audit log and waiting
// for its group commit, but no key lookup and no encryption. Audited
// encrypt minus this is the KMS's share of a call; this minus
// BenchmarkAPIGroupedNoopUnaryCallers is the audit log's (its committer,
// and the groups it forms, against groups released every millisecond).
func BenchmarkAPIAuditedNoopUnaryCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	benchCallers(b, func(b *testing.B, srv *Server, c *client.Client, st *unsealedState) func(context.Context) error {
		ct, err := c.KMS.Encrypt(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		nc := noopServer(b, srv, &auditedNoopKMS{resp: ct, log: st.audit})
		return func(ctx context.Context) error {
			r, err := nc.KMS.Encrypt(ctx, req)
			if err == nil && len(r.Ciphertext) == 0 {
				err = fmt.Errorf("empty reply")
			}
			return err
		}
	})
}

// noopServer serves k on a second admin-like socket with srv's own admin
// gRPC options and returns a client of it.
func noopServer(b *testing.B, srv *Server, k wardv1.KMSServer) *client.Client {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "noop.sock")
	ln, err := listenAdmin(sock)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer(srv.adminServerOptions()...)
	wardv1.RegisterKMSServer(g, k)
	go g.Serve(ln)
	b.Cleanup(g.Stop)
	if os.Getenv("WARD_BENCH_CONNSTATS") != "" {
		return countingClient(b, sock)
	}
	c, err := client.Dial("unix://" + sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkKMSPluginEncryptCallers measures the Kubernetes KMS v2 path:
// the k8s.io/kms gRPC client (as kube-apiserver) over the plugin's unix
// socket, the plugin, the admin socket and the audited KMS, from 1, 8 and
// 64 concurrent callers.
func BenchmarkKMSPluginEncryptCallers(b *testing.B) {
	seed := &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "bench"}
	benchCallers(b, func(b *testing.B, srv *Server, c *client.Client, _ *unsealedState) func(context.Context) error {
		dir := b.TempDir()
		sock := filepath.Join(dir, "kms.sock")
		ln, err := kmsplugin.Listen(sock)
		if err != nil {
			b.Fatal(err)
		}
		p := kmsplugin.New(&kmsplugin.Config{Socket: sock, Cluster: "bench", Key: "bench"}, kmsplugin.ClientAuthority(c))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Serve(ctx, ln); close(done) }()
		b.Cleanup(func() { cancel(); <-done })
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		kc := kmsapi.NewKeyManagementServiceClient(conn)
		return func(ctx context.Context) error {
			r, err := kc.Encrypt(ctx, seed)
			if err == nil && r.KeyId == "" {
				err = fmt.Errorf("no key_id")
			}
			return err
		}
	})
}

// BenchmarkKMSEncryptAuditedCallers is the same without the API: the
// authority's own KMS called in process, audited through the same log on
// the same bbolt file. Its ratio to BenchmarkAPIEncryptUnaryCallers is the
// cost of the API (gRPC, socket, interceptors); its ratio to the KMS with an
// in-memory recorder (kms.BenchmarkEncryptDecryptRewrap) is the cost of the
// durable audit.
func BenchmarkKMSEncryptAuditedCallers(b *testing.B) {
	pt := make([]byte, 32)
	benchCallers(b, func(_ *testing.B, _ *Server, _ *client.Client, st *unsealedState) func(context.Context) error {
		ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "bench", RequestID: "r"})
		return func(context.Context) error {
			_, _, err := st.kms.Encrypt(ctx, "bench", pt, nil)
			return err
		}
	})
}

// benchCallers runs b.N calls of the function mk returns from 1, 8 and 64
// concurrent callers (or the counts WARD_BENCH_CALLERS lists, as in
// "22,64") against a fresh authority each (see measureCallers).
func benchCallers(b *testing.B, mk func(*testing.B, *Server, *client.Client, *unsealedState) func(context.Context) error) {
	counts := []int{1, 8, 64}
	if v := os.Getenv("WARD_BENCH_CALLERS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("WARD_BENCH_CALLERS=%q: want caller counts separated by commas, as in 22,64", v)
			}
			counts = append(counts, n)
		}
	}
	for _, callers := range counts {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			srv, c := benchServer(b)
			st, err := srv.state()
			if err != nil {
				b.Fatal(err)
			}
			measureCallers(b, st, callers, mk(b, srv, c, st))
		})
	}
}

// measureCallers runs b.N calls of call from callers goroutines. Besides
// throughput, p50/p99 latency and events per audit commit it reports
// cpu-µs/op: the process's CPU time (user + system: client, server,
// committer, GC, all in this process) over the run divided by the calls.
// On a shared 2-core machine that is steadier than ops/s, which counts
// time spent waiting for a core or for another build's fsync.
func measureCallers(b *testing.B, st *unsealedState, callers int, call func(context.Context) error) {
	commits, s0 := st.audit.Commits(), st.audit.CommitStats()
	p0, c0 := readProcStats(b), clientConn.snapshot()
	benchcpu.Callers(b, callers, call)
	reportProcStats(b, p0, readProcStats(b))
	reportConnStats(b, c0, clientConn.snapshot())
	if c := st.audit.Commits() - commits; c > 0 { // none for the no-op
		b.ReportMetric(float64(b.N)/float64(c), "events/commit")
		reportCommitStats(b, s0, st.audit.CommitStats())
	}
}

// reportCommitStats reports where the audit log's events spent their time
// between s0 and s1 (audit.CommitStats), in µs: per event queue-µs (queued
// until its group closed) and resume-µs (result sent until its caller ran
// again); per group linger-µs (the committer waiting for returning
// callers), commit-µs (the commit) and, of it, store-µs (the store batch).
func reportCommitStats(b *testing.B, s0, s1 audit.CommitStats) {
	ev, gr := float64(s1.Events-s0.Events), float64(s1.Groups-s0.Groups)
	if ev == 0 || gr == 0 {
		return
	}
	us := func(d time.Duration, n float64) float64 { return float64(d.Microseconds()) / n }
	b.ReportMetric(us(s1.Queued-s0.Queued, ev), "queue-µs")
	b.ReportMetric(us(s1.Resumed-s0.Resumed, ev), "resume-µs")
	b.ReportMetric(us(s1.Lingered-s0.Lingered, gr), "linger-µs")
	b.ReportMetric(us(s1.Committed-s0.Committed, gr), "commit-µs")
	b.ReportMetric(us(s1.Stored-s0.Stored, gr), "store-µs")
}

// BenchmarkNodeKMSEncryptCallers measures the workload KMS as a workload
// reaches it on the real authority: gRPC over mTLS on loopback with the
// workload's X509-SVID, the Node API's authentication, the policy decision,
// the KMS encrypt and its audit event group-committed to bbolt with fsync,
// from 8 and 64 concurrent callers on one connection. Compare with
// BenchmarkAPIEncryptUnaryCallers (the admin socket) and, for the mTLS
// stack alone, nodeapi.BenchmarkWorkloadKMSCallers/noop.
func BenchmarkNodeKMSEncryptCallers(b *testing.B) {
	for _, callers := range []int{8, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			e := startIdentity(b)
			ctx := context.Background()
			e.benchKey(b, `@id("bench") permit(principal == Workload::"spiffe://`+testTD+`/bench", action == Action::"kms:encrypt", resource == Key::"bench");`)
			kc := e.workloadKMS(b, e.workloadSVID(b, "/bench"))
			req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
			untilFirstCall(b, func() error { _, err := kc.Encrypt(ctx, req); return err })
			st, err := e.srv.state()
			if err != nil {
				b.Fatal(err)
			}
			measureCallers(b, st, callers, func(ctx context.Context) error {
				_, err := kc.Encrypt(ctx, req)
				return err
			})
		})
	}
}

// benchKey creates the confidential key "bench" in e's authority and
// applies policy (one Cedar file) through its admin socket.
func (e *idEnv) benchKey(b *testing.B, policy string) {
	b.Helper()
	ctx := context.Background()
	admin, err := client.Dial(e.srv.AdminAddress())
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "bench", Classification: "confidential"}); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(policy)}}); err != nil {
		b.Fatal(err)
	}
}

// untilFirstCall retries call (bounded) until it succeeds once: the policy
// reaches the Node API's decisions through its watch.
func untilFirstCall(b *testing.B, call func() error) {
	b.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err = call(); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		b.Fatal(err)
	}
}
