package gateway

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// captureHello returns the bytes a crypto/tls client with cfg writes
// before it waits for the server: its ClientHello records.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, cfg)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = c.Handshake()
		a.Close()
	}()
	defer b.Close()
	b.SetDeadline(time.Now().Add(5 * time.Second))
	var out []byte
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(b, hdr); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(b, body); err != nil {
			t.Fatal(err)
		}
		out = append(append(out, hdr...), body...)
		// One ClientHello: stop when the handshake message is complete.
		msg := handshakeBytes(out)
		if len(msg) >= 4 && len(msg) >= 4+int(msg[1])<<16|int(msg[2])<<8|int(msg[3]) {
			return out
		}
	}
}

// handshakeBytes concatenates the bodies of the records in raw.
func handshakeBytes(raw []byte) []byte {
	var msg []byte
	for len(raw) >= 5 {
		n := int(binary.BigEndian.Uint16(raw[3:]))
		msg = append(msg, raw[5:5+n]...)
		raw = raw[5+n:]
	}
	return msg
}

// resplit re-frames the handshake bytes of raw into records of at most
// size bytes each (a ClientHello spanning several records).
func resplit(raw []byte, size int) []byte {
	msg := handshakeBytes(raw)
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// realHellos are ClientHellos of crypto/tls clients: TLS 1.3 with the
// hybrid post-quantum key share (over 1 KiB), with classic key shares
// only, TLS 1.2, with and without SNI, with ALPN.
func realHellos(t testing.TB) map[string]struct {
	raw  []byte
	sni  string
	tls3 bool
} {
	const name = "api.prod.example.ward"
	out := map[string]struct {
		raw  []byte
		sni  string
		tls3 bool
	}{}
	add := func(k string, cfg *tls.Config, sni string, tls3 bool) {
		out[k] = struct {
			raw  []byte
			sni  string
			tls3 bool
		}{captureHello(t, cfg), sni, tls3}
	}
	add("tls13-pq-sni", &tls.Config{ServerName: name, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, name, true)
	add("tls13-x25519-sni", &tls.Config{ServerName: name, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519}}, name, true)
	add("tls13-pq-nosni", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, "", true)
	add("tls12-sni", &tls.Config{ServerName: name, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}, name, false)
	add("tls12-nosni", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}, "", false)
	add("tls13-alpn", &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"ward-verdict/1", "http/1.1"}}, name, true)
	return out
}

func TestReadClientHelloReal(t *testing.T) {
	for k, tc := range realHellos(t) {
		for _, split := range []int{0, 1000, 100, 7} {
			raw := tc.raw
			if split > 0 {
				raw = resplit(raw, split)
			}
			h, err := ReadClientHello(bytes.NewReader(append(append([]byte(nil), raw...), "TRAILING"...)), DefaultMaxClientHello)
			if err != nil {
				t.Fatalf("%s split %d: %v", k, split, err)
			}
			if h.ServerName != tc.sni {
				t.Errorf("%s split %d: ServerName %q, want %q", k, split, h.ServerName, tc.sni)
			}
			if !bytes.Equal(h.Raw, raw) {
				t.Errorf("%s split %d: Raw is not exactly the hello's records (read %d bytes of %d)", k, split, len(h.Raw), len(raw))
			}
			if tc.tls3 != bytes.Contains(u16s(h.SupportedVersions), []byte{3, 4}) {
				t.Errorf("%s: supported_versions %x", k, h.SupportedVersions)
			}
			if split == 0 && k == "tls13-pq-sni" {
				if len(raw) <= 1024 {
					t.Errorf("the post-quantum ClientHello is %d bytes, expected over 1 KiB", len(raw))
				}
				t.Logf("post-quantum ClientHello: %d bytes in %d record(s)", len(raw), h.Records)
			}
			if want := len(handshakeBytes(raw)); split > 0 && h.Records != (want+split-1)/split {
				t.Errorf("%s split %d: %d records of a %d-byte message", k, split, h.Records, want)
			}
		}
	}
	h, err := ReadClientHello(bytes.NewReader(realHellos(t)["tls13-alpn"].raw), DefaultMaxClientHello)
	if err != nil || strings.Join(h.ALPN, ",") != "ward-verdict/1,http/1.1" {
		t.Fatalf("ALPN %q %v", h.ALPN, err)
	}
}

func u16s(vs []uint16) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return b
}

// helloMsg builds a ClientHello handshake message with exts (type, data).
func helloMsg(version uint16, exts ...[]byte) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint16(body, version)
	body = append(body, make([]byte, 32)...)
	body = append(body, 0)                // session id
	body = append(body, 0, 2, 0x13, 0x01) // one suite
	body = append(body, 1, 0)             // null compression
	if exts != nil {
		var e []byte
		for _, x := range exts {
			e = append(e, x...)
		}
		body = binary.BigEndian.AppendUint16(body, uint16(len(e)))
		body = append(body, e...)
	}
	return append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

func ext(typ uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

// sniExt is a server_name extension with the given (type, name) entries.
func sniExt(entries ...any) []byte {
	var list []byte
	for i := 0; i < len(entries); i += 2 {
		name := entries[i+1].(string)
		list = append(list, byte(entries[i].(int)))
		list = binary.BigEndian.AppendUint16(list, uint16(len(name)))
		list = append(list, name...)
	}
	return ext(0, append(binary.BigEndian.AppendUint16(nil, uint16(len(list))), list...))
}

func frame(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestReadClientHelloTable(t *testing.T) {
	big := make([]byte, 64<<10)
	for _, tc := range []struct {
		name   string
		in     []byte
		reason string
		sni    string
	}{
		{"sni", frame(helloMsg(0x0303, sniExt(0, "a.b.ward")), 1<<14), "", "a.b.ward"},
		{"no extensions", frame(helloMsg(0x0303), 1<<14), "", ""},
		{"unknown name type ignored", frame(helloMsg(0x0303, sniExt(1, "x", 0, "a.ward")), 1<<14), "", "a.ward"},
		{"one byte records", frame(helloMsg(0x0303, sniExt(0, "a.b.ward")), 1), "", "a.b.ward"},
		{"http", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), ReasonNotTLS, ""},
		{"proxy header", []byte("\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x0c"), ReasonNotTLS, ""},
		{"sslv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0, 0}, ReasonNotTLS, ""},
		{"empty", nil, ReasonEOF, ""},
		{"truncated record", frame(helloMsg(0x0303, sniExt(0, "a.b.ward")), 1<<14)[:20], ReasonEOF, ""},
		{"empty record", []byte{22, 3, 1, 0, 0}, ReasonMalformed, ""},
		{"record over 2^14", []byte{22, 3, 1, 0x40, 0x01}, ReasonMalformed, ""},
		{"other record inside", append(frame(helloMsg(0x0303, sniExt(0, "a.ward"))[:10], 10), 23, 3, 3, 0, 1, 0), ReasonMalformed, ""},
		{"not a client hello", frame([]byte{2, 0, 0, 1, 0}, 100), ReasonMalformed, ""},
		{"64 KiB hello", frame(append([]byte{1, 1, 0, 0}, big...), 1<<14), ReasonTooLarge, ""},
		{"too many records", frame(helloMsg(0x0303, ext(99, make([]byte, 300))), 1), ReasonMalformed, ""},
		{"bytes after the hello", frame(append(helloMsg(0x0303), 0, 0), 1<<14), ReasonMalformed, ""},
		{"ssl3", frame(helloMsg(0x0300), 100), ReasonMalformed, ""},
		{"truncated body", frame([]byte{1, 0, 0, 3, 3, 3, 0}, 100), ReasonMalformed, ""},
		{"two host names", frame(helloMsg(0x0303, sniExt(0, "a.ward", 0, "b.ward")), 1<<14), ReasonMalformed, ""},
		{"duplicate extension", frame(helloMsg(0x0303, sniExt(0, "a.ward"), sniExt(0, "a.ward")), 1<<14), ReasonMalformed, ""},
		{"empty name list", frame(helloMsg(0x0303, ext(0, []byte{0, 0})), 1<<14), ReasonMalformed, ""},
		{"empty host name", frame(helloMsg(0x0303, sniExt(0, "")), 1<<14), ReasonMalformed, ""},
		{"trailing dot", frame(helloMsg(0x0303, sniExt(0, "a.ward.")), 1<<14), ReasonMalformed, ""},
		{"nul in name", frame(helloMsg(0x0303, sniExt(0, "a\x00.ward")), 1<<14), ReasonMalformed, ""},
		{"long label", frame(helloMsg(0x0303, sniExt(0, strings.Repeat("a", 64)+".ward")), 1<<14), ReasonMalformed, ""},
		{"extension overruns", frame(helloMsg(0x0303, []byte{0, 0, 0, 9, 0}), 1<<14), ReasonMalformed, ""},
		{"bad versions", frame(helloMsg(0x0303, ext(43, []byte{3, 3, 4, 3})), 1<<14), ReasonMalformed, ""},
		{"bad alpn", frame(helloMsg(0x0303, ext(16, []byte{0, 2, 0, 0})), 1<<14), ReasonMalformed, ""},
	} {
		h, err := ReadClientHello(bytes.NewReader(tc.in), DefaultMaxClientHello)
		if tc.reason == "" {
			if err != nil || h.ServerName != tc.sni {
				t.Errorf("%s: %v, %+v; want server name %q", tc.name, err, h, tc.sni)
			}
			continue
		}
		var he *HelloError
		if !errors.As(err, &he) || he.Reason != tc.reason {
			t.Errorf("%s: error %v, want reason %s", tc.name, err, tc.reason)
		}
	}
}

// TestReadClientHelloBounded: an oversized ClientHello is refused from
// its header, before its body is read.
func TestReadClientHelloBounded(t *testing.T) {
	in := frame(append([]byte{1, 1, 0, 0}, make([]byte, 64<<10)...), 1<<14)
	r := bytes.NewReader(in)
	_, err := ReadClientHello(r, DefaultMaxClientHello)
	var he *HelloError
	if !errors.As(err, &he) || he.Reason != ReasonTooLarge {
		t.Fatalf("error %v", err)
	}
	if read := len(in) - r.Len(); read > 5+1<<14 {
		t.Fatalf("read %d bytes of a 64 KiB ClientHello before refusing it", read)
	}
}

// goServerName is the server name crypto/tls's server reads from raw, and
// whether it accepted the ClientHello far enough to say.
func goServerName(raw []byte) (string, bool) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		b.SetDeadline(time.Now().Add(time.Second))
		b.Write(raw)
		io.Copy(io.Discard, b)
		b.Close()
	}()
	var name string
	var ok bool
	stop := errors.New("stop")
	c := tls.Server(a, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		name, ok = chi.ServerName, true
		return nil, stop
	}})
	c.SetDeadline(time.Now().Add(time.Second))
	c.Handshake()
	return name, ok
}

// FuzzReadClientHello: the parser never panics, stays in its bounds, and
// whenever both it and crypto/tls's server accept a ClientHello they read
// the same server name (the gateway routes by exactly the name the
// terminating proxy sees). Seeded with real crypto/tls ClientHellos, also
// split over several records.
func FuzzReadClientHello(f *testing.F) {
	for _, tc := range realHellos(f) {
		f.Add(tc.raw)
		f.Add(resplit(tc.raw, 300))
	}
	f.Add(frame(helloMsg(0x0303, sniExt(0, "a.b.ward")), 1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ReadClientHello(bytes.NewReader(in), 4096)
		if err != nil {
			var he *HelloError
			if !errors.As(err, &he) || he.Reason == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if !bytes.HasPrefix(in, h.Raw) || len(h.Raw) > 4+4096+5*MaxHelloRecords {
			t.Fatalf("Raw (%d bytes) is not a bounded prefix of the input", len(h.Raw))
		}
		h2, err := ReadClientHello(bytes.NewReader(h.Raw), 4096)
		if err != nil || h2.ServerName != h.ServerName {
			t.Fatalf("re-reading Raw: %v", err)
		}
		if name, ok := goServerName(h.Raw); ok && name != h.ServerName {
			t.Fatalf("crypto/tls reads server name %q, the gateway %q", name, h.ServerName)
		}
	})
}

// BenchmarkReadClientHello parses a real post-quantum ClientHello (one
// record, about 1.5 KiB) and the same split into 100-byte records.
func BenchmarkReadClientHello(b *testing.B) {
	raw := realHellos(b)["tls13-pq-sni"].raw
	for _, tc := range []struct {
		name string
		in   []byte
	}{{"one-record", raw}, {"100-byte-records", resplit(raw, 100)}} {
		b.Run(tc.name, func(b *testing.B) {
			r := bytes.NewReader(tc.in)
			b.SetBytes(int64(len(tc.in)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r.Reset(tc.in)
				if _, err := ReadClientHello(r, DefaultMaxClientHello); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
