package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
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

// verdictConn is the outbound side: its first Reads consume the verdict
// frame (when ALPNVerdict was negotiated), so the app's bytes towards the
// remote flow at once while the remote's bytes reach the app only once
// the remote has allowed the connection. Only one goroutine reads (pipe's
// copy from the remote); refusal is read after it ended.
//
// A read deadline that passes while the frame is awaited is an ordinary
// timeout: the bytes read so far are kept and the next Read goes on
// waiting. (Keeping the timeout as the verdict's outcome made every later
// Read fail at once, so pipe's copy loop, which retries timeouts while the
// other direction is busy, spun on a core.)
type verdictConn struct {
	net.Conn        // the TLS connection to the remote
	done     bool   // the frame was read (or none is expected)
	hdr      []byte // the frame's bytes read so far
	err      error
	refusal  string // "refused by the remote policy: ..." (set before err)
}

func newVerdictConn(tc *tls.Conn) *verdictConn {
	return &verdictConn{Conn: tc, done: tc.ConnectionState().NegotiatedProtocol != ALPNVerdict}
}

func (v *verdictConn) Read(b []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if !v.done {
		if err := v.readVerdict(); err != nil {
			if !isTimeout(err) {
				v.err = err
			}
			return 0, err
		}
		if v.err != nil {
			return 0, v.err
		}
	}
	return v.Conn.Read(b)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// need is how many bytes the frame holds, as far as hdr tells.
func (v *verdictConn) need() int {
	switch {
	case len(v.hdr) < 1:
		return 1
	case v.hdr[0] == verdictAllowed:
		return 1
	case len(v.hdr) < 3:
		return 3
	}
	return 3 + min(int(binary.BigEndian.Uint16(v.hdr[1:3])), maxVerdictReason)
}

// readVerdict reads the rest of the frame; a timeout returns with what
// was read kept in hdr. Once the frame is complete it sets done and, for
// a refusal, refusal and err.
func (v *verdictConn) readVerdict() error {
	for len(v.hdr) < v.need() {
		var buf [3 + maxVerdictReason]byte
		n, err := v.Conn.Read(buf[:v.need()-len(v.hdr)])
		v.hdr = append(v.hdr, buf[:n]...)
		if len(v.hdr) >= v.need() {
			break
		}
		if err == nil {
			continue
		}
		switch {
		case isTimeout(err):
			return err
		case len(v.hdr) == 0 && errors.Is(err, io.EOF):
			return fmt.Errorf("the remote ward proxy closed the connection before its verdict: %w", err)
		case len(v.hdr) == 0:
			return err
		case errors.Is(err, io.EOF):
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("remote verdict %d: %w", v.hdr[0], err)
	}
	v.done = true
	kind, reason := v.hdr[0], ""
	if kind == verdictAllowed {
		v.hdr = nil
		return nil
	}
	reason = string(v.hdr[3:])
	v.hdr = nil
	switch kind {
	case verdictDenied:
		v.refusal = "refused by the remote policy: " + reason
	case verdictAppUnavilable:
		v.refusal = "refused by the remote proxy: its app is not reachable: " + reason
	default:
		v.refusal = fmt.Sprintf("refused by the remote proxy (verdict %d): %s", kind, reason)
	}
	v.err = errRemoteRefused
	return nil
}

// CloseWrite half-closes the TLS side (pipe's clean end of a direction).
func (v *verdictConn) CloseWrite() error {
	if cw, ok := v.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

var _ net.Conn = (*verdictConn)(nil)
