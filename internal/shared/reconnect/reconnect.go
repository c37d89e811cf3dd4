// Package reconnect bounds how long a gRPC client waits between attempts
// to reconnect. gRPC's default backoff grows to 120 s: after an outage of
// a few minutes a client (the kms-plugin, a proxy's or gateway's agent
// socket) could stay failing that long after its server was back. Every
// ward gRPC client dials with DialOption instead.
package reconnect

import (
	"math/rand/v2"
	"time"

	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// MaxDelay is the longest wait between reconnect attempts of ward's
// clients of the authority and of the agent's sockets (with 20% jitter,
// so clients that lost the same server do not come back in lockstep).
const MaxDelay = 2 * time.Second

// Config is the backoff of DialOption with max as its longest delay: from
// 100 ms, x1.6 per failed attempt, 20% jitter.
func Config(max time.Duration) backoff.Config {
	return backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: max}
}

// DialOption bounds the reconnect backoff at max (0: MaxDelay). A
// connection attempt may take up to 20 s (gRPC's default), so a slow TLS
// handshake on a loaded server is not cut short.
func DialOption(max time.Duration) grpc.DialOption {
	if max <= 0 {
		max = MaxDelay
	}
	return grpc.WithConnectParams(grpc.ConnectParams{Backoff: Config(max), MinConnectTimeout: 20 * time.Second})
}

// WorkloadAPI are the go-spiffe Workload API client options of ward's
// workloads (proxy, kms-plugin, webhook): the gRPC reconnect bounded as
// above, and go-spiffe's own retry of its watch (linear, up to 30 s by
// default) bounded at MaxDelay too, so an SVID flows again within seconds
// of the agent coming back.
func WorkloadAPI() []gsw.ClientOption {
	return []gsw.ClientOption{gsw.WithDialOptions(DialOption(0)), gsw.WithBackoffStrategy(watchBackoff{})}
}

type watchBackoff struct{}

func (watchBackoff) NewBackoff() gsw.Backoff { return &watchDelay{} }

// watchDelay: 100 ms, doubling, at most MaxDelay, 20% jitter.
type watchDelay struct{ next time.Duration }

func (w *watchDelay) Next() time.Duration {
	if w.next == 0 {
		w.next = 100 * time.Millisecond
	}
	d := w.next
	w.next = min(2*w.next, MaxDelay)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

func (w *watchDelay) Reset() { w.next = 0 }
