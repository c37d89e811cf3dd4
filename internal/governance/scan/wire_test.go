package scan

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// serverHelloRecord builds a ServerHello record (TLS 1.3 form when v13).
func serverHelloRecord(t testing.TB, suite uint16, v13 bool, group uint16, hrr bool) []byte {
	var b cryptobyte.Builder
	b.AddUint8(msgServerHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(uint16(TLS12))
		if hrr {
			b.AddBytes(helloRetryRandom)
		} else {
			b.AddBytes(make([]byte, 32))
		}
		b.AddUint8(0)
		b.AddUint16(suite)
		b.AddUint8(0)
		if v13 {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(extSupportedVersions)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(uint16(TLS13)) })
				b.AddUint16(extKeyShare)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(group) })
			})
		}
	})
	msg := b.BytesOrPanic()
	return append([]byte{recordHandshake, 3, 3, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

func TestReadServerHello(t *testing.T) {
	sh, err := readServerHello(bytes.NewReader(serverHelloRecord(t, 0x1302, true, 0x11EC, true)), false)
	if err != nil {
		t.Fatal(err)
	}
	if !sh.hrr || sh.version != TLS13 || sh.suite != 0x1302 || sh.group != 0x11EC {
		t.Fatalf("got %+v", sh)
	}
	sh, err = readServerHello(bytes.NewReader(serverHelloRecord(t, 0xC02F, false, 0, false)), false)
	if err != nil || sh.hrr || sh.version != TLS12 || sh.suite != 0xC02F {
		t.Fatalf("got %+v, %v", sh, err)
	}
	_, err = readServerHello(bytes.NewReader([]byte{recordAlert, 3, 3, 0, 2, 2, 40}), false)
	var a *AlertError
	if !errors.As(err, &a) || a.Description != 40 || !strings.Contains(err.Error(), "handshake_failure") {
		t.Fatalf("alert: %v", err)
	}
	if _, err := readServerHello(strings.NewReader("HTTP/1.1 400 Bad Request\r\n\r\n"), false); !errors.Is(err, errNotTLS) {
		t.Fatalf("HTTP answer: %v", err)
	}
	if _, err := readServerHello(bytes.NewReader([]byte{recordHandshake, 3, 3, 0xff, 0xff}), false); err == nil {
		t.Fatal("an oversized record was accepted")
	}
	if _, err := readServerHello(bytes.NewReader(nil), false); !errors.Is(err, errClosed) {
		t.Fatalf("EOF: %v", err)
	}
}

// TestClientHelloParsesInGo: Go's TLS server accepts ward's hellos and
// answers them as the probes expect (a HelloRetryRequest naming its group
// for a TLS 1.3 hello without key shares; a TLS 1.2 ServerHello).
func TestClientHelloParsesInGo(t *testing.T) {
	cert := selfSigned(t)
	for _, tc := range []struct {
		h     hello
		check func(*serverHello) bool
	}{
		{hello{version: TLS13, suites: suitesFor(TLS13), groups: groupsFor(TLS13), serverName: "x.test"},
			func(sh *serverHello) bool { return sh.hrr && sh.version == TLS13 && sh.group == 0x11EC }},
		{hello{version: TLS13, suites: suitesFor(TLS13), groups: []uint16{0x001D}, keyShares: []keyShare{mustShare(t)}},
			func(sh *serverHello) bool {
				return !sh.hrr && sh.version == TLS13 && sh.group == 0x001D && SuiteByID(sh.suite).tls13()
			}},
		{hello{version: TLS12, suites: suitesFor(TLS12), groups: groupsFor(TLS12)},
			func(sh *serverHello) bool { return !sh.hrr && sh.version == TLS12 && SuiteByID(sh.suite).AEAD }},
	} {
		c, s := net.Pipe()
		go func() {
			srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
			srv.Handshake()
			srv.Close()
		}()
		rec, err := tc.h.marshal()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go c.Write(rec)
		sh, err := readServerHello(c, false)
		c.Close()
		if err != nil || !tc.check(sh) {
			t.Errorf("%v hello: %+v, %v", tc.h.version, sh, err)
		}
	}
}

func TestParseSuite(t *testing.T) {
	for id, want := range map[uint16]Suite{
		0xC02F: {KeyExchange: "ECDHE", Auth: "RSA", Cipher: "AES_128_GCM", MAC: "AEAD", Bits: 128, AEAD: true, Forward: true},
		0x000A: {KeyExchange: "RSA", Auth: "RSA", Cipher: "3DES_EDE_CBC", MAC: "SHA", Bits: 112},
		0x0003: {KeyExchange: "RSA", Auth: "RSA", Cipher: "RC4_40", MAC: "MD5", Bits: 40, Export: true},
		0x0018: {KeyExchange: "DH", Auth: "anon", Cipher: "RC4_128", MAC: "MD5", Bits: 128, Forward: true},
		0x1303: {KeyExchange: "any", Auth: "any", Cipher: "CHACHA20_POLY1305", MAC: "AEAD", Bits: 256, AEAD: true, Forward: true},
		0xC0AE: {KeyExchange: "ECDHE", Auth: "ECDSA", Cipher: "AES_128_CCM_8", MAC: "AEAD", Bits: 128, AEAD: true, Forward: true},
		0x0001: {KeyExchange: "RSA", Auth: "RSA", Cipher: "NULL", MAC: "MD5"},
	} {
		got := SuiteByID(id)
		want.ID, want.Name = id, got.Name
		if got != want {
			t.Errorf("0x%04X: got %+v, want %+v", id, got, want)
		}
	}
	for _, s := range allSuites() {
		if s.Cipher == "" || s.MAC == "" || s.KeyExchange == "" {
			t.Errorf("%s: incomplete %+v", s.Name, s)
		}
	}
}

// FuzzReadServerHello: whatever a server sends, the reader returns
// without panicking and within its bounds.
func FuzzReadServerHello(f *testing.F) {
	f.Add(serverHelloRecord(f, 0x1301, true, 0x001D, true), true)
	f.Add(serverHelloRecord(f, 0xC030, false, 0, false), true)
	f.Add([]byte{recordAlert, 3, 1, 0, 2, 2, 70}, false)
	f.Add([]byte{recordHandshake, 3, 3, 0, 4, msgServerHello, 0, 0, 0}, true)
	f.Fuzz(func(t *testing.T, data []byte, flight bool) {
		r := &countingReader{r: bytes.NewReader(data)}
		readServerHello(r, flight)
		if r.n > maxFlight+maxRecord+5 {
			t.Fatalf("read %d bytes", r.n)
		}
	})
}

// FuzzParseFlight: the messages after a TLS 1.2 ServerHello.
func FuzzParseFlight(f *testing.F) {
	f.Add(uint8(msgCertificate), []byte{0, 0, 3, 0, 0, 0})
	f.Add(uint8(msgServerKeyExchange), []byte{3, 0, 0x1d, 32})
	f.Add(uint8(msgCertificateStatus), []byte{1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, typ uint8, m []byte) {
		sh := &serverHello{suite: 0xC02F}
		sh.parseFlightMessage(typ, m)
		parseServerHello(m)
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func mustShare(t testing.TB) keyShare {
	ks, err := x25519Share()
	if err != nil {
		t.Fatal(err)
	}
	return ks
}
