package workloadapi

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
)

// reportLatency adds p50 and p99 of the samples as benchmark metrics.
func reportLatency(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkFetchX509SVID: one go-spiffe FetchX509SVID per op over a kept
// connection (stream open, attestation from /proc, first message, close).
func BenchmarkFetchX509SVID(b *testing.B) {
	ctx := context.Background()
	src := newMemSource(b, newTestCA(b))
	src.addEntry(b, "/a", uidSelector())
	client, err := gsw.New(ctx, gsw.WithAddr(serve(b, src, workload("a"))))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := client.FetchX509SVID(ctx); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
}

// BenchmarkFetchJWTSVID: one FetchJWTSVID per op, including the CA's ES256
// signature (an agent would cache tokens).
func BenchmarkFetchJWTSVID(b *testing.B) {
	ctx := context.Background()
	src := newMemSource(b, newTestCA(b))
	src.addEntry(b, "/a", uidSelector())
	client, err := gsw.New(ctx, gsw.WithAddr(serve(b, src, workload("a"))))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
}

// BenchmarkPushToStreams: 1,000 open FetchX509SVID streams; one op is a
// change of the source and the time until every stream has the new message.
func BenchmarkPushToStreams(b *testing.B) {
	const streams = 1000
	ctx, cancel := context.WithCancel(withHeader(context.Background()))
	defer cancel()
	src := newMemSource(b, newTestCA(b))
	id := src.addEntry(b, "/a", uidSelector())
	addr := serve(b, src, workload("a"))
	// Spread the streams over a few connections, as separate workloads would.
	var clients []pb.SpiffeWorkloadAPIClient
	for i := 0; i < 10; i++ {
		clients = append(clients, rawClient(b, addr))
	}
	got := make(chan struct{}, streams)
	var ready sync.WaitGroup
	for i := 0; i < streams; i++ {
		s, err := clients[i%len(clients)].FetchX509SVID(ctx, &pb.X509SVIDRequest{})
		if err != nil {
			b.Fatal(err)
		}
		ready.Add(1)
		go func() {
			first := true
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
				if first {
					ready.Done()
					first = false
					continue
				}
				got <- struct{}{}
			}
		}()
	}
	ready.Wait()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src.issue(b, id)
		for j := 0; j < streams; j++ {
			<-got
		}
	}
	b.ReportMetric(float64(streams), "streams")
}
