package scan

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// fakeLegacyServer answers ClientHellos as a server from before 2015
// would: for a hello of a version it speaks, a ServerHello with the first
// of its suites the client offered (server preference), or a
// handshake_failure alert; a protocol_version alert for other versions.
// Debian's OpenSSL no longer builds SSLv3, RC4, export or (at the default
// build) 3DES, so this is how those probes are proven; it sends no
// certificate (the probes read only the ServerHello).
func fakeLegacyServer(t *testing.T, versions []Version, suites []uint16) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write(fakeAnswer(c, versions, suites))
			}()
		}
	}()
	return l.Addr().String()
}

func fakeAnswer(r io.Reader, versions []Version, suites []uint16) []byte {
	alert := func(d byte) []byte { return []byte{recordAlert, 3, 0, 0, 2, 2, d} }
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil
	}
	s := cryptobyte.String(body)
	var (
		typ               uint8
		msg, sid, cs, cmp cryptobyte.String
		vers              uint16
	)
	if !s.ReadUint8(&typ) || !s.ReadUint24LengthPrefixed(&msg) || !msg.ReadUint16(&vers) || !msg.Skip(32) ||
		!msg.ReadUint8LengthPrefixed(&sid) || !msg.ReadUint16LengthPrefixed(&cs) || !msg.ReadUint8LengthPrefixed(&cmp) {
		return alert(50)
	}
	// A legacy server ignores supported_versions: the hello's version is
	// its client's best. It answers with the highest version both speak.
	var v Version
	for _, sv := range versions {
		if sv <= Version(vers) && sv > v {
			v = sv
		}
	}
	if v == 0 {
		return alert(70)
	}
	var offered []uint16
	for !cs.Empty() {
		var id uint16
		cs.ReadUint16(&id)
		offered = append(offered, id)
	}
	for _, id := range suites {
		if slices.Contains(offered, id) {
			var b cryptobyte.Builder
			b.AddUint8(msgServerHello)
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(uint16(v))
				b.AddBytes(make([]byte, 32))
				b.AddUint8(0)
				b.AddUint16(id)
				b.AddUint8(0)
			})
			m := b.BytesOrPanic()
			return append([]byte{recordHandshake, 3, byte(v), byte(len(m) >> 8), byte(len(m))}, m...)
		}
	}
	return alert(40)
}

// TestLegacyProbes: SSLv3 and TLS 1.0 with RC4, export, single DES, 3DES,
// IDEA and NULL suites, which Go's TLS client refuses to speak, are found
// and graded.
func TestLegacyProbes(t *testing.T) {
	suites := []uint16{0x0004, 0x0005, 0x0003, 0x0009, 0x000A, 0x0007, 0x0001, 0x0016}
	addr := fakeLegacyServer(t, []Version{SSL30, TLS10}, suites)
	r := New(Options{Timeout: 5 * time.Second}).Scan(context.Background(), addr)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	for _, p := range r.Protocols {
		want := p.Version == SSL30 || p.Version == TLS10
		if p.Offered != want {
			t.Errorf("%s offered=%t, want %t", p.Version, p.Offered, want)
		}
		if !want {
			continue
		}
		var got []uint16
		for _, s := range p.Suites {
			got = append(got, s.ID)
		}
		want2 := slices.Sorted(slices.Values(suites))
		if !slices.Equal(got, want2) {
			t.Errorf("%s suites %04X, want %04X", p.Version, got, want2)
		}
	}
	found := map[string]bool{}
	for _, f := range r.Findings {
		found[f.Rule] = true
	}
	for _, rule := range []string{"protocol-sslv3", "protocol-tls10", "protocol-no-tls13", "suite-rc4", "suite-export", "suite-des",
		"suite-3des", "suite-legacy-cipher", "suite-null", "suite-md5", "suite-no-forward-secrecy", "chain-missing"} {
		if !found[rule] {
			t.Errorf("no %s finding: %v", rule, r.Findings)
		}
	}
	if Worst(r.Findings) != Critical || r.Findings[0].Severity != Critical {
		t.Errorf("findings not worst first: %v", r.Findings)
	}
	var sb strings.Builder
	WriteTable(&sb, []*Result{r})
	if !strings.Contains(sb.String(), "SSLv3    offered, 8 suites") {
		t.Errorf("table:\n%s", sb.String())
	}
}
