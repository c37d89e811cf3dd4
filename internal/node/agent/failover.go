package agent

import (
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
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
	return r.Scheme() + ":///authorities", []grpc.DialOption{grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(failoverServiceConfig)}
}
