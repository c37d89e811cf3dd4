package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// verdictPair is a TLS connection that negotiated ALPNVerdict: the
// client side wrapped as the outbound proxy wraps it, and the raw server
// side a (possibly malicious) remote writes its frame into.
func verdictPair(t *testing.T) (*verdictConn, *tls.Conn) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	srv := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}},
		NextProtos: []string{ALPNVerdict}, MinVersion: tls.VersionTLS13})
	cli := tls.Client(a, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNVerdict, "http/1.1"}, MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() }) // not a TLS close: nobody reads its alert
	if cli.ConnectionState().NegotiatedProtocol != ALPNVerdict {
		t.Fatal("verdict not negotiated")
	}
	return newVerdictConn(cli), srv
}

// TestVerdictWaitSurvivesAReadDeadline: a read deadline that passes while
// the outbound side waits for the remote's verdict (pipe sets one every
// idle/8 and retries while the other direction is busy) is an ordinary
// timeout, not the connection's fate. Before the fix the timeout was kept
// as the verdict's outcome, so every later Read failed at once with it
// and pipe's copy loop spun on a core for as long as the caller kept
// sending (a remote holding back its verdict pinned the outbound proxy's
// CPU), and a verdict arriving a moment late was never read.
func TestVerdictWaitSurvivesAReadDeadline(t *testing.T) {
	v, srv := verdictPair(t)
	buf := make([]byte, 64)
	v.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := v.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before any verdict: %v, want a deadline error", err)
	}
	// The remote sends half a denial frame, then stalls past a deadline.
	go srv.Write([]byte{verdictDenied, 0})
	v.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := v.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of half a frame: %v, want a deadline error", err)
	}
	v.SetReadDeadline(time.Now().Add(10 * time.Second))
	go srv.Write([]byte{4, 'n', 'o', 'p', 'e'})
	if _, err := v.Read(buf); !errors.Is(err, errRemoteRefused) || v.refusal != "refused by the remote policy: nope" {
		t.Fatalf("after the rest of the frame: %v %q, want the refusal", err, v.refusal)
	}
}

// TestVerdictAllowedAfterADeadline: an allowed verdict that arrives after
// a read deadline passed still lets the app's bytes through.
func TestVerdictAllowedAfterADeadline(t *testing.T) {
	v, srv := verdictPair(t)
	buf := make([]byte, 64)
	v.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := v.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before any verdict: %v, want a deadline error", err)
	}
	v.SetReadDeadline(time.Now().Add(10 * time.Second))
	go srv.Write([]byte{verdictAllowed, 'h', 'i'})
	got, err := io.ReadAll(io.LimitReader(v, 2))
	if err != nil || string(got) != "hi" {
		t.Fatalf("app bytes after a late allowed verdict: %q %v", got, err)
	}
}

// chunkConn serves data to Read in chunks of the sizes in sizes (cycled),
// with a read timeout before every chunk whose size is 0, then io.EOF: a
// remote that sends its verdict frame in pieces and stalls between them.
type chunkConn struct {
	net.Conn
	data  []byte
	sizes []byte
	i     int
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (c *chunkConn) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[c.i%len(c.sizes)])
		c.i++
		if n == 0 {
			return 0, timeoutErr{}
		}
	}
	n = min(n, len(b), len(c.data))
	copy(b, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzVerdictFrame reads what a remote ward proxy sends (a verdict frame,
// then the app's bytes), split and stalled at random: the outbound side
// never panics, delivers exactly the bytes after an allowed verdict,
// reports exactly the (bounded) reason of a refusal, and a timeout never
// ends the wait.
func FuzzVerdictFrame(f *testing.F) {
	f.Add([]byte{0, 'h', 'i'}, []byte{1})
	f.Add([]byte{1, 0, 4, 'n', 'o', 'p', 'e'}, []byte{1, 0, 2})
	f.Add([]byte{2, 0xff, 0xff, 'x'}, []byte{3, 0})
	f.Add([]byte{7, 0, 0}, []byte{0, 0, 200})
	f.Add([]byte{1, 0}, []byte{})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		if len(sizes) > 0 && !slices.ContainsFunc(sizes, func(b byte) bool { return b != 0 }) {
			return // only timeouts: never any byte
		}
		v := &verdictConn{Conn: &chunkConn{data: data, sizes: sizes}}
		var got []byte
		var err error
		buf := make([]byte, 512)
		for range 100000 {
			var n int
			n, err = v.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil && !isTimeout(err) {
				break
			}
		}
		if err == nil || isTimeout(err) {
			t.Fatalf("still reading after %d bytes", len(data))
		}
		switch {
		case len(data) == 0:
			if errors.Is(err, errRemoteRefused) {
				t.Fatal("no frame, yet a refusal")
			}
		case data[0] == verdictAllowed:
			if !errors.Is(err, io.EOF) || string(got) != string(data[1:]) {
				t.Fatalf("after an allowed verdict: %q %v, want %q", got, err, data[1:])
			}
		case len(data) >= 3 && len(data) >= 3+min(int(data[1])<<8|int(data[2]), maxVerdictReason):
			l := min(int(data[1])<<8|int(data[2]), maxVerdictReason)
			if !errors.Is(err, errRemoteRefused) || len(got) != 0 || !strings.HasSuffix(v.refusal, ": "+string(data[3:3+l])) {
				t.Fatalf("a refusal: %q %v refusal %q", got, err, v.refusal)
			}
		default:
			if errors.Is(err, errRemoteRefused) || len(got) != 0 {
				t.Fatalf("a truncated frame: %q %v refusal %q", got, err, v.refusal)
			}
		}
	})
}
