package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// The verdict: how an inbound ward proxy tells an outbound ward proxy what
// it decided, so that the calling side can log "refused by the remote
// policy" instead of a bare close.
//
// An outbound proxy offers the ALPN protocol ALPNVerdict (then
// "http/1.1", so that servers which only speak h2 fall back to no ALPN
// rather than fail the handshake). An inbound proxy selects ALPNVerdict
// only when it is offered (other clients, curl or SPIFFE-native apps, see
// no change) and then, after its decision and before any byte of the app,
// sends one verdict frame:
//
//	kind (1 byte): 0 allowed, 1 denied by policy, 2 the app is not reachable
//	for kind != 0: length (2 bytes, big endian, at most 1024) and a reason (UTF-8)
//
// The reason names the policy version, the cause and the server's
// correlation id, never the policies' text. After kind 0 the connection
// carries the app's bytes both ways; after any other kind the server
// closes it.
const ALPNVerdict = "ward-verdict/1"

// Verdict kinds.
const (
	verdictAllowed       byte = 0
	verdictDenied        byte = 1
	verdictAppUnavilable byte = 2
	maxVerdictReason          = 1024
)

// serverVerdictConfig makes tc (a per-connection server config) select
// ALPNVerdict for clients that offer it.
func serverVerdictConfig(tc *tls.Config) {
	tc.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if !slices.Contains(hello.SupportedProtos, ALPNVerdict) {
			return nil, nil
		}
		c := tc.Clone()
		c.GetConfigForClient = nil
		c.NextProtos = []string{ALPNVerdict}
		return c, nil
	}
}

// sendVerdict writes the verdict frame if the client negotiated it.
// After a refusal it half-closes and waits briefly for the client to
// close, so that the frame is not lost to a reset caused by client bytes
// the server never read.
func sendVerdict(tc *tls.Conn, kind byte, reason string, timeout time.Duration) {
	if tc.ConnectionState().NegotiatedProtocol != ALPNVerdict {
		return
	}
	frame := []byte{kind}
	if kind != verdictAllowed {
		if len(reason) > maxVerdictReason {
			reason = reason[:maxVerdictReason]
		}
		frame = binary.BigEndian.AppendUint16(frame, uint16(len(reason)))
		frame = append(frame, reason...)
	}
	tc.SetWriteDeadline(time.Now().Add(timeout))
	_, err := tc.Write(frame)
	tc.SetWriteDeadline(time.Time{})
	if err != nil || kind == verdictAllowed {
		return
	}
	_ = tc.CloseWrite()
	tc.SetReadDeadline(time.Now().Add(timeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(tc, 1<<20))
}

// errRemoteRefused is returned by verdictConn's Read when the remote
// ward proxy refused the connection; remoteRefusal holds its reason.
var errRemoteRefused = errors.New("refused by the remote")

// verdictConn is the outbound side: its first Read consumes the verdict
// frame (when ALPNVerdict was negotiated), so the app's bytes towards the
// remote flow at once while the remote's bytes reach the app only once
// the remote has allowed the connection.
type verdictConn struct {
	*tls.Conn
	once    sync.Once
	err     error
	refusal string // "refused by the remote policy: ..." (set before err)
}

func newVerdictConn(tc *tls.Conn) *verdictConn {
	v := &verdictConn{Conn: tc}
	if tc.ConnectionState().NegotiatedProtocol != ALPNVerdict {
		v.once.Do(func() {})
	}
	return v
}

func (v *verdictConn) Read(b []byte) (int, error) {
	v.once.Do(v.readVerdict)
	if v.err != nil {
		return 0, v.err
	}
	return v.Conn.Read(b)
}

func (v *verdictConn) readVerdict() {
	var kind [1]byte
	if _, err := io.ReadFull(v.Conn, kind[:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("the remote ward proxy closed the connection before its verdict: %w", err)
		}
		v.err = err
		return
	}
	if kind[0] == verdictAllowed {
		return
	}
	var n [2]byte
	if _, err := io.ReadFull(v.Conn, n[:]); err != nil {
		v.err = fmt.Errorf("remote verdict %d: %w", kind[0], err)
		return
	}
	l := min(int(binary.BigEndian.Uint16(n[:])), maxVerdictReason)
	reason := make([]byte, l)
	if _, err := io.ReadFull(v.Conn, reason); err != nil {
		v.err = fmt.Errorf("remote verdict %d: %w", kind[0], err)
		return
	}
	switch kind[0] {
	case verdictDenied:
		v.refusal = "refused by the remote policy: " + string(reason)
	case verdictAppUnavilable:
		v.refusal = "refused by the remote proxy: its app is not reachable: " + string(reason)
	default:
		v.refusal = fmt.Sprintf("refused by the remote proxy (verdict %d): %s", kind[0], reason)
	}
	v.err = errRemoteRefused
}

// CloseWrite half-closes the TLS side (pipe's clean end of a direction).
func (v *verdictConn) CloseWrite() error { return v.Conn.CloseWrite() }

var _ net.Conn = (*verdictConn)(nil)
