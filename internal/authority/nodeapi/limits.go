package nodeapi

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Resource limits of the Node API.
//
// grpc-go has one receive limit per server and reads a whole message
// before any interceptor runs (for unary calls), so a per-method limit
// cannot be checked after authentication. Instead the listener (route)
// does the TLS handshake itself and hands each connection to one of two
// gRPC servers:
//
//   - a connection that presented a client certificate verified against
//     the bundle (TLSConfig) goes to the main server, whose limit is the
//     largest authenticated need (maxAuthenticatedMsg); authenticate then
//     checks the SVID per call;
//   - a connection without a certificate goes to the anonymous server,
//     which serves Attest only (everything else is Unauthenticated) with a
//     receive limit of maxAttestMsg and static 64 KiB flow-control windows:
//     grpc-go checks a message's announced length against the limit before
//     reading its body, and the windows bound what the peer can have in
//     flight, so an oversized Attest is refused (ResourceExhausted) without
//     being buffered.
//
// Attest on a connection with a certificate is refused (FailedPrecondition),
// so an SVID never buys the large limit for the unauthenticated method.
// Pre-authentication work is bounded too: at most maxPreHandshake TLS
// handshakes run at once (further connections wait in the kernel's accept
// queue), each gets handshakeTimeout, at most maxAnonConns certificate-less
// connections are open at once, each with at most maxAnonStreams streams,
// and at most Config.MaxConcurrentAttests attestations are in progress.
const (
	// maxAttestMsg bounds one Attest message. The largest legitimate one is
	// an x509pop first message: a CSR (the agent's is ECDSA P-256, ~250
	// bytes; parseCSR allows maxCSR = 16 KiB) and a node chain of at most
	// maxChain (8) certificates, ~1-2 KiB each even for RSA-4096 with a
	// few SANs (8 x 4 KiB = 32 KiB allows generous extensions). A join
	// token message is under 1 KiB; a challenge signature under 1 KiB.
	// 64 KiB is about 1.3x the worst legitimate case (16 + 32 KiB + framing).
	maxAttestMsg = 64 << 10
	// maxAuthenticatedMsg bounds messages from SVID holders: a workload
	// KMS batch (items of up to kms.MaxPlaintext, 64 KiB) and
	// SignX509SVIDs (up to MaxBatch CSRs of up to maxCSR) are the largest;
	// 32 MiB lets a batch of ~500 maximal plaintexts through and is what
	// the authority has always accepted from SVID holders.
	maxAuthenticatedMsg = 32 << 20
	// handshakeTimeout bounds the TLS handshake (and grpc's HTTP/2
	// preface), so slow peers cannot hold pre-handshake slots.
	handshakeTimeout = 10 * time.Second
	// maxPreHandshake bounds concurrent TLS handshakes (each parses and
	// verifies a peer chain); enough for a fleet reconnecting at once, as
	// later connections wait in the accept queue rather than fail.
	maxPreHandshake = 128
	// maxAnonConns bounds open connections without a certificate: with the
	// 64 KiB windows that caps their in-flight data at ~64 MiB.
	maxAnonConns = 1024
	// maxAnonStreams: an attesting agent needs one stream.
	maxAnonStreams = 4
	// defaultMaxAttests is Config.MaxConcurrentAttests' default.
	defaultMaxAttests = 64
)

// route accepts TCP connections, completes their TLS handshake (bounded in
// number and time) and hands them to the main or the anonymous server.
func (s *Server) route(ln net.Listener) error {
	slots := make(chan struct{}, maxPreHandshake)
	cfg := s.TLSConfig()
	for {
		slots <- struct{}{}
		c, err := ln.Accept()
		if err != nil {
			<-slots
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			tc, err := handshake(c, cfg)
			<-slots
			if err != nil {
				s.cfg.Log.Debug("Node API TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
				return
			}
			if len(tc.ConnectionState().PeerCertificates) > 0 {
				s.authLn.push(tc)
				return
			}
			if s.anonConns.Add(1) > maxAnonConns {
				s.anonConns.Add(-1)
				s.cfg.Log.Warn("too many Node API connections without a client certificate; closing one", "peer", c.RemoteAddr().String(), "limit", maxAnonConns)
				tc.Close()
				return
			}
			s.anonLn.push(&countedConn{Conn: tc, release: func() { s.anonConns.Add(-1) }})
		}()
	}
}

func handshake(c net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// anonStream is the stream interceptor of the anonymous server: Attest
// within the concurrency bound, anything else refused by authenticate.
func (s *Server) anonStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if info.FullMethod == attestMethod {
		select {
		case s.attests <- struct{}{}:
			defer func() { <-s.attests }()
		default:
			return status.Errorf(codes.ResourceExhausted, "too many attestations in progress (%d): retry with backoff", cap(s.attests))
		}
	}
	return s.authStream(srv, ss, info, h)
}

// countedConn releases its slot among the anonymous connections on Close.
type countedConn struct {
	*tls.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// handshaken are the transport credentials of connections route has
// already taken through the TLS handshake: they report its state, so
// authenticate sees the peer certificates as with credentials.NewTLS.
type handshaken struct{}

type tlsStater interface {
	ConnectionState() tls.ConnectionState
}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(tlsStater)
	if !ok {
		c.Close()
		return nil, nil, errors.New("nodeapi: connection did not come through the TLS listener")
	}
	return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("nodeapi: server-side credentials only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }

// chanListener is a net.Listener fed by route.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "nodeapi" }
func (chanAddr) String() string  { return "nodeapi-routed" }
