package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/node/workloadapi"
	"github.com/wardproject/ward/internal/shared/attest"
)

const benchWorkloads = 10000

// loadedAgent returns an agent holding n entries (selector unix:uid:i),
// each with an X509-SVID signed by a real CA, and the CA.
func loadedAgent(b *testing.B, n int) (*Agent, *testAuthority) {
	b.Helper()
	auth := newTestAuthority(b, testTD, time.Hour, time.Hour)
	a := bareAgent(b)
	a.td = testTD
	resp := &wardv1.SyncResponse{}
	for i := range n {
		resp.Entries = append(resp.Entries, &wardv1.Entry{Id: "e" + strconv.Itoa(i), SpiffeId: fmt.Sprintf("spiffe://%s/w/%d", testTD.Name(), i),
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}}, Revision: 1})
	}
	bd, _ := auth.ca.Bundle()
	resp.BundleSpiffeJson, _ = bd.Marshal()
	resp.BundleSequence = 1
	if err := a.applySync(resp); err != nil {
		b.Fatal(err)
	}
	for id, e := range a.entries {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		chain, err := auth.ca.SignX509SVID(context.Background(), ca.SVIDRequest{ID: e.spiffeID, PublicKey: key.Public()})
		if err != nil {
			b.Fatal(err)
		}
		a.svids[id] = &svid{chain: chain, key: key, spec: e.spec, rotateAt: rotateAt(time.Now(), chain[0].NotBefore, chain[0].NotAfter, 0.5)}
	}
	return a, auth
}

// BenchmarkAgentMemoryPerWorkload: heap held per registered workload
// (entry, index, X509-SVID chain and key).
func BenchmarkAgentMemoryPerWorkload(b *testing.B) {
	for range b.N {
		b.StopTimer()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		a, _ := loadedAgent(b, benchWorkloads)
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/benchWorkloads, "heap-B/workload")
		runtime.KeepAlive(a)
		b.StartTimer()
	}
}

// counterAttestor gives the i-th caller the selector unix:uid:i mod n.
type counterAttestor struct {
	n    int
	next atomic.Int64
}

func (c *counterAttestor) Attest(context.Context, attest.Caller) ([]attest.Selector, error) {
	i := int(c.next.Add(1)-1) % c.n
	return []attest.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}}, nil
}

func serveWorkloadAPI(b *testing.B, a *Agent, att attest.Attestor) []*grpc.ClientConn {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "w.sock")
	l, err := workloadapi.Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := workloadapi.New(a, att)
	go srv.Serve(l)
	b.Cleanup(srv.Stop)
	var conns []*grpc.ClientConn
	for range 8 {
		c, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

func header() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), workloadapi.HeaderKey, workloadapi.HeaderValue)
}

// BenchmarkAgentBundleRotationPush: 10,000 workloads hold an open
// FetchX509SVID stream; one bundle change (a prepared root appearing) is
// timed until every stream has received it.
func BenchmarkAgentBundleRotationPush(b *testing.B) {
	a, auth := loadedAgent(b, benchWorkloads)
	conns := serveWorkloadAPI(b, a, &counterAttestor{n: benchWorkloads})
	ctx, cancel := context.WithCancel(header())
	defer cancel()
	var got atomic.Int64
	var wg sync.WaitGroup
	for i := range benchWorkloads {
		st, err := pb.NewSpiffeWorkloadAPIClient(conns[i%len(conns)]).FetchX509SVID(ctx, &pb.X509SVIDRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
				got.Add(1)
			}
		}()
	}
	bundles := make([]*spiffebundle.Bundle, 2)
	bundles[0], _ = auth.ca.Bundle()
	if err := auth.ca.PrepareRoot(context.Background()); err != nil {
		b.Fatal(err)
	}
	bundles[1], _ = auth.ca.Bundle()
	b.ResetTimer()
	for i := range b.N {
		doc, _ := bundles[(i+1)%2].Marshal()
		want := got.Load() + benchWorkloads
		if err := a.applySync(&wardv1.SyncResponse{Entries: a.protoEntries(), BundleSpiffeJson: doc, BundleSequence: uint64(i + 2)}); err != nil {
			b.Fatal(err)
		}
		for got.Load() < want {
			time.Sleep(100 * time.Microsecond)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/push-to-10k")
	cancel()
	wg.Wait()
}

// protoEntries returns the agent's entries in wire form (for re-syncing
// the same set).
func (a *Agent) protoEntries() []*wardv1.Entry {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]*wardv1.Entry, 0, len(a.entries))
	for _, e := range a.entries {
		p := &wardv1.Entry{Id: e.id, SpiffeId: e.spiffeID.String(), Revision: e.revision, TtlSeconds: int64(e.ttl / time.Second), DnsNames: e.dns, Hint: e.hint}
		for _, s := range e.selectors {
			p.Selectors = append(p.Selectors, &wardv1.Selector{Type: s.Type, Value: s.Value})
		}
		out = append(out, p)
	}
	return out
}

// BenchmarkWorkloadAPIFetchLatency: open FetchX509SVID, receive the first
// response, close — on an agent holding 10,000 workloads; p50 and p99.
func BenchmarkWorkloadAPIFetchLatency(b *testing.B) {
	a, _ := loadedAgent(b, benchWorkloads)
	conns := serveWorkloadAPI(b, a, &counterAttestor{n: benchWorkloads})
	client := pb.NewSpiffeWorkloadAPIClient(conns[0])
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		ctx, cancel := context.WithCancel(header())
		st, err := client.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
		if err == nil {
			_, err = st.Recv()
		}
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkIdentities: selector matching for one caller among 10,000
// entries.
func BenchmarkIdentities(b *testing.B) {
	a, _ := loadedAgent(b, benchWorkloads)
	callers := make([][]attest.Selector, 64)
	for i := range callers {
		callers[i] = attest.Normalize([]attest.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i*97)}, {Type: "unix", Value: "gid:0"}})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if len(a.Identities(callers[i%len(callers)])) != 1 {
			b.Fatal("no identity")
		}
	}
}
