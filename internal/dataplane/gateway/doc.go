// Package gateway is `ward gateway`, the east-west gateway: it routes TLS
// connections by their SNI to local inbound proxies without terminating
// them.
//
// It reads only a connection's ClientHello (bounded in size and time;
// clienthello.go is ward's own parser of the TLS wire format), picks the
// route its server name names (sniname: <service>.<trust domain>.ward),
// forwards the ClientHello's records unchanged, optionally after a PROXY
// v2 header with the original source, and splices the bytes both ways.
// It holds no key and no certificate: mutual TLS runs end to end between
// the caller's and the inbound proxy, so a compromised gateway can route
// traffic but never read it or impersonate anyone. Anything it cannot
// route (no or unknown SNI, non-TLS bytes, an oversized or malformed
// ClientHello, a client too slow to send it) is refused and counted by
// reason. Limits, metrics, an access log line per connection, /healthz
// and /readyz follow the proxy's.
package gateway
