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
	t.Cleanup(func() { cli.Close(); srv.Close() })
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
