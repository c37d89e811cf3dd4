package agent

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// failoverServiceConfig spreads the agent's calls over every authority
// (round robin over the connected ones: one that is down or cut off is
// skipped) and retries on another authority, up to 4 more times, the Node
// API calls whose repetition is harmless when one answers Unavailable:
// Sync and SVID signing. Attestation and renewal are retried by the
// agent's own loops.
const failoverServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "ward.v1.Node", "method": "Sync"},
      {"service": "ward.v1.Node", "method": "SignX509SVIDs"},
      {"service": "ward.v1.Node", "method": "SignJWTSVID"}
    ],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// authorityTarget returns the gRPC target and options for server_address:
// one host:port as it is, several (comma-separated, authorities sharing
// one store) through a static resolver with failoverServiceConfig. The
// authorities are authenticated by SPIFFE ID, not by host name, so one
// TLS configuration serves them all.
func authorityTarget(addr string) (string, []grpc.DialOption) {
	parts := strings.Split(addr, ",")
	if len(parts) == 1 {
		return strings.TrimSpace(addr), nil
	}
	r := manual.NewBuilderWithScheme("ward-authorities")
	var st resolver.State
	for _, p := range parts {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: strings.TrimSpace(p)})
	}
	r.InitialState(st)
	return r.Scheme() + ":///authorities", []grpc.DialOption{grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(failoverServiceConfig),
		// A black-holed authority (cut off, powered off) is noticed within
		// 15 s and dropped from the round robin (the Node API permits pings
		// every 10 s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithChainUnaryInterceptor(attemptTimeout)}
}

// failoverAttempt bounds one attempt of a repeatable Node API call when
// there are several authorities: one that does not answer (cut off from
// etcd, black-holed) holds a call no longer than this before it is tried
// on the next.
const failoverAttempt = 10 * time.Second

// attemptTimeout retries Sync and SVID signing on the next authority after
// an attempt timed out or found its authority unavailable, until the
// call's own deadline.
func attemptTimeout(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch method {
	case "/ward.v1.Node/Sync", "/ward.v1.Node/SignX509SVIDs", "/ward.v1.Node/SignJWTSVID":
	default:
		return invoke(ctx, method, req, reply, cc, opts...)
	}
	for pause := 50 * time.Millisecond; ; pause = min(2*pause, time.Second) {
		actx, cancel := context.WithTimeout(ctx, failoverAttempt)
		err := invoke(actx, method, req, reply, cc, opts...)
		cancel()
		if c := status.Code(err); ctx.Err() != nil || (c != codes.DeadlineExceeded && c != codes.Unavailable) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
	}
}
