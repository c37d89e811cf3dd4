package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/gateway"
)

// benchBackend stands for the inbound proxy: "ack" mode reads the
// ClientHello (n bytes), answers one byte and closes; "sink" mode reads
// everything.
func benchBackend(b *testing.B, helloLen int, ack bool) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if ack {
					buf := make([]byte, helloLen)
					if _, err := io.ReadFull(c, buf); err == nil {
						c.Write([]byte{1})
					}
					return
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return l
}

func benchGateway(b *testing.B, forward string) *gateway.Gateway {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	g, _ := startGateway(b, ctx, &gateway.Config{Listen: "127.0.0.1:0", TrustDomain: tdName, AccessLog: "off",
		MaxConnections: 100000, MaxConnectionsPerSource: 100000, MaxPendingPerSource: 10000,
		Routes: []gateway.Route{{Service: "api", Forward: forward}}})
	return g
}

// BenchmarkNewConnection is the gateway's per-connection path: accept,
// read and parse a real post-quantum ClientHello, route by SNI, dial the
// backend, forward the ClientHello, splice the answer back, close; against
// the same exchange without the gateway (direct).
func BenchmarkNewConnection(b *testing.B) {
	hello := realHello(b, apiSNI)
	back := benchBackend(b, len(hello), true)
	g := benchGateway(b, back.Addr().String())
	for _, tc := range []struct{ name, addr string }{{"direct", back.Addr().String()}, {"gateway", g.Addr("listen").String()}} {
		b.Run(tc.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			one := make([]byte, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				c, err := net.Dial("tcp", tc.addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(hello); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				c.Close()
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
		})
	}
}

// BenchmarkSplice is the steady-state data path: 64 KiB writes on one
// connection through the gateway to a sink, against the same writes
// straight to the sink.
func BenchmarkSplice(b *testing.B) {
	hello := realHello(b, apiSNI)
	sink := benchBackend(b, 0, false)
	g := benchGateway(b, sink.Addr().String())
	for _, tc := range []struct{ name, addr string }{{"direct", sink.Addr().String()}, {"gateway", g.Addr("listen").String()}} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(hello); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(fmt.Errorf("write %d: %w", i, err))
				}
			}
		})
	}
}
