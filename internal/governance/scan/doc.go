// Package scan is ward's TLS endpoint scanner (`ward scan`), the first
// piece of governance: it measures what an endpoint really offers so that
// the declared posture can be compared with it (drift), counted (report)
// and shown (dashboard).
//
// A scan of HOST:PORT probes, each probe one short connection with a
// bounded read and a deadline, at most Options.Concurrency at once:
//
//   - every protocol version from SSLv3 to TLS 1.3 and every cipher suite
//     of each, with ClientHellos ward builds itself (wire.go,
//     golang.org/x/crypto/cryptobyte), so that it can offer what Go's TLS
//     client refuses to speak (SSLv3, RC4, export, 3DES, NULL, anonymous);
//     the server's answer is read only up to its ServerHello, or in TLS 1.2
//     and below up to the end of its cleartext first flight;
//   - the TLS 1.3 key-exchange groups (a hello without key shares makes the
//     server name its choice in a HelloRetryRequest), whether the
//     post-quantum hybrid X25519MLKEM768 is offered and preferred, and the
//     ECDHE curves of TLS 1.2 (from the ServerKeyExchange);
//   - one full handshake with Go's TLS client, presenting no client
//     certificate: the chain, the stapled OCSP response, and whether the
//     server requests and requires a client certificate.
//
// The chain is verified against the roots given (a SPIFFE trust bundle, or
// the system's), the host name and the SPIFFE ID are checked, and the
// result is graded by the rubric in grade.go (docs/scan.md). WriteTable,
// WriteJSON and WriteSARIF render results; Worst gives the exit status.
//
// The package imports only the standard library, x/crypto and nothing of
// ward's other parts: a scan needs no authority, and the authority's
// continuous scans (drift) and report build on Result.
package scan
