// Package proxy is ward's data plane, `ward proxy`: it terminates and
// originates mutual TLS with the workload's X509-SVID from the SPIFFE
// Workload API and authorizes every inbound connection with the policy
// engine, inside the process.
//
// Inbound listeners verify the caller's SVID against the trust bundle,
// decide `connect` for (caller SPIFFE ID, this service) and forward
// authorized connections to the local app over TCP or a unix socket,
// optionally telling it who called (PROXY protocol v2 with a SPIFFE ID TLV,
// or an X-Ward-Peer-Id header for HTTP apps). Outbound listeners take the
// app's plaintext on loopback and dial the remote with mTLS, requiring its
// configured SPIFFE ID.
//
// Policy arrives through a PolicySource: the node agent's policy socket
// (the authority's versions, pushed as they are applied) or local policy
// files; without a valid policy every inbound connection is denied. Each
// new policy version re-checks the open connections and closes those it
// denies. An inbound proxy tells a calling ward proxy its verdict
// (verdict.go), and a proxy waiting for its SVID says what is missing
// (workload.go). Metrics, an access log line per connection, /healthz and
// /readyz make every decision visible.
package proxy
