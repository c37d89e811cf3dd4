package server

import (
	"context"
	"net"
	"os"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// procStats is what a benchmark of calls through the gRPC stack costs
// the process besides CPU time: read- and write-like system calls (all
// threads, from /proc/self/io), context switches of its threads, GC
// cycles, goroutine schedulings and goroutines created.
type procStats struct {
	syscr, syscw  float64 // read-like, write-like system calls
	vcsw, ivcsw   float64 // voluntary, involuntary context switches
	gcs           float64 // completed GC cycles
	scheds        float64 // runnable → running transitions (sampled 1 in 8 by the runtime, scaled back)
	goroutinesNew float64
	sysµs         float64 // system (kernel) CPU time, µs
}

var procMetrics = []rtmetrics.Sample{
	{Name: "/gc/cycles/total:gc-cycles"},
	{Name: "/sched/latencies:seconds"},
	{Name: "/sched/goroutines-created:goroutines"},
}

func readProcStats(tb testing.TB) procStats {
	var s procStats
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ": ")
			n, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "syscr":
				s.syscr = n
			case "syscw":
				s.syscw = n
			}
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	s.vcsw, s.ivcsw = float64(ru.Nvcsw), float64(ru.Nivcsw)
	s.sysµs = float64(ru.Stime.Nano()) / 1e3
	ms := make([]rtmetrics.Sample, len(procMetrics))
	copy(ms, procMetrics)
	rtmetrics.Read(ms)
	for _, m := range ms {
		switch m.Name {
		case "/gc/cycles/total:gc-cycles":
			s.gcs = float64(m.Value.Uint64())
		case "/sched/goroutines-created:goroutines":
			s.goroutinesNew = float64(m.Value.Uint64())
		case "/sched/latencies:seconds":
			if m.Value.Kind() == rtmetrics.KindFloat64Histogram {
				var n uint64
				for _, c := range m.Value.Float64Histogram().Counts {
					n += c
				}
				s.scheds = 8 * float64(n)
			}
		}
	}
	return s
}

// reportProcStats reports s1 − s0 per call (GC cycles per 1,000 calls).
func reportProcStats(b *testing.B, s0, s1 procStats) {
	n := float64(b.N)
	b.ReportMetric((s1.sysµs-s0.sysµs)/n, "sys-µs/op")
	b.ReportMetric((s1.syscr-s0.syscr)/n, "syscr/op")
	b.ReportMetric((s1.syscw-s0.syscw)/n, "syscw/op")
	b.ReportMetric((s1.vcsw-s0.vcsw)/n, "vcsw/op")
	b.ReportMetric((s1.ivcsw-s0.ivcsw)/n, "ivcsw/op")
	b.ReportMetric(1000*(s1.gcs-s0.gcs)/n, "gc/1k-op")
	b.ReportMetric((s1.scheds-s0.scheds)/n, "scheds/op")
	b.ReportMetric((s1.goroutinesNew-s0.goroutinesNew)/n, "newg/op")
}

// connCounts counts the client side's reads and writes on its admin
// socket connection (WARD_BENCH_CONNSTATS=1 in the no-op benchmarks):
// calls per write is how well the client's gRPC batches requests, calls
// per read how well the server's batches replies.
type connCounts struct{ reads, writes, rbytes, wbytes atomic.Int64 }

var clientConn connCounts

type countingConn struct {
	net.Conn
	c *connCounts
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.reads.Add(1)
	c.c.rbytes.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.writes.Add(1)
	c.c.wbytes.Add(int64(n))
	return n, err
}

// countingClient is client.Dial's admin socket client (local credentials)
// with its connection counted in clientConn.
func countingClient(b *testing.B, sock string) *client.Client {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(local.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(addr, "unix://"))
			if err != nil {
				return nil, err
			}
			return countingConn{c, &clientConn}, nil
		}))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &client.Client{KMS: wardv1.NewKMSClient(conn)}
}

type connSnapshot struct{ reads, writes, rbytes, wbytes int64 }

func (c *connCounts) snapshot() connSnapshot {
	return connSnapshot{c.reads.Load(), c.writes.Load(), c.rbytes.Load(), c.wbytes.Load()}
}

func reportConnStats(b *testing.B, s0, s1 connSnapshot) {
	if s1.reads == s0.reads {
		return
	}
	n := float64(b.N)
	b.ReportMetric(float64(s1.reads-s0.reads)/n, "cl-reads/op")
	b.ReportMetric(float64(s1.writes-s0.writes)/n, "cl-writes/op")
	b.ReportMetric(float64(s1.rbytes-s0.rbytes)/n, "cl-rB/op")
	b.ReportMetric(float64(s1.wbytes-s0.wbytes)/n, "cl-wB/op")
}
