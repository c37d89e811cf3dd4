package proxyproto

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"testing"
)

func TestProxyV2RoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst net.Addr
	}{
		{"ipv4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 8443}},
		{"ipv6", &net.TCPAddr{IP: net.IPv6loopback, Port: 1}, &net.TCPAddr{IP: net.IPv6loopback, Port: 2}},
		{"unix", &net.UnixAddr{Name: "@", Net: "unix"}, &net.UnixAddr{Name: "/a", Net: "unix"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendV2(nil, tc.src, tc.dst, TLV{TLVSPIFFEID, []byte("spiffe://td/x")}, TLV{TLVUniqueID, []byte("abc")})
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, "payload"...)
			r := bufio.NewReader(bytes.NewReader(b))
			h, err := ReadV2(r)
			if err != nil {
				t.Fatal(err)
			}
			if h.SPIFFEID() != "spiffe://td/x" || h.CorrelationID() != "abc" || h.Local {
				t.Fatalf("header %+v", h)
			}
			if _, ok := tc.src.(*net.TCPAddr); ok && (h.Src.String() != tc.src.String() || h.Dst.String() != tc.dst.String()) {
				t.Fatalf("addresses %v %v", h.Src, h.Dst)
			}
			if rest, _ := r.ReadString(0); rest != "payload" {
				t.Fatalf("payload after the header: %q", rest)
			}
		})
	}
}

func TestProxyV2Malformed(t *testing.T) {
	good, _ := AppendV2(nil, &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1}, &net.TCPAddr{IP: net.IPv4(5, 6, 7, 8), Port: 2}, TLV{TLVSPIFFEID, []byte("spiffe://a/b")})
	mut := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"short", good[:10], "EOF"},
		{"signature", mut(func(b []byte) []byte { b[0] = 'X'; return b }), "bad signature"},
		{"version", mut(func(b []byte) []byte { b[12] = 0x11; return b }), "version 1"},
		{"command", mut(func(b []byte) []byte { b[12] = 0x25; return b }), "unknown command"},
		{"family", mut(func(b []byte) []byte { b[13] = 0x99; return b }), "unsupported address family"},
		{"too long", mut(func(b []byte) []byte { b[14], b[15] = 0xFF, 0xFF; return b }), "over the limit"},
		{"truncated tlv", mut(func(b []byte) []byte { b[15] -= 2; return b[:len(b)-2] }), "claims"},
		{"body short", mut(func(b []byte) []byte { return b[:20] }), "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadV2(bufio.NewReader(bytes.NewReader(tc.in)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := AppendV2(nil, nil, nil, TLV{1, make([]byte, 70000)}); err == nil {
		t.Fatal("oversized TLV accepted")
	}
}

func FuzzReadV2(f *testing.F) {
	good, _ := AppendV2(nil, &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1}, &net.TCPAddr{IP: net.IPv4(5, 6, 7, 8), Port: 2}, TLV{TLVSPIFFEID, []byte("spiffe://a/b")})
	f.Add(good)
	f.Add(append([]byte(nil), proxyV2Sig...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadV2(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return
		}
		var tlvs []TLV
		for k, v := range h.TLVs {
			tlvs = append(tlvs, TLV{k, v})
		}
		out, err := AppendV2(nil, h.Src, h.Dst, tlvs...)
		if err != nil {
			return
		}
		h2, err := ReadV2(bufio.NewReader(bytes.NewReader(out)))
		if err != nil {
			t.Fatalf("re-encoded header does not parse: %v", err)
		}
		if len(h2.TLVs) != len(h.TLVs) {
			t.Fatalf("TLVs changed in a round trip")
		}
	})
}
