// Package proxyproto encodes and decodes the PROXY protocol v2 header
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt) that ward
// writes in front of a forwarded connection: the proxy towards its app
// (with the caller's SPIFFE ID), the gateway towards an inbound proxy
// (with the original source address), and that inbound proxy reads.
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// The header as ward writes it: command PROXY, TCP over IPv4/IPv6 with the
// caller's and the listener's addresses (AF_UNSPEC when either is not TCP),
// and these TLVs:
const (
	// TLVUniqueID (PP2_TYPE_UNIQUE_ID) carries the connection's correlation id.
	TLVUniqueID = 0x05
	// TLVSPIFFEID (first custom type, PP2_TYPE_MIN_CUSTOM) carries the
	// caller's verified SPIFFE ID.
	TLVSPIFFEID = 0xE0
)

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxProxyV2Len bounds the variable part we accept when parsing.
const maxProxyV2Len = 4096

// Header is a decoded PROXY v2 header.
type Header struct {
	Local    bool     // command LOCAL (health checks): no addresses
	Src, Dst net.Addr // nil for AF_UNSPEC
	TLVs     map[byte][]byte
}

// SPIFFEID returns the caller's SPIFFE ID TLV ("" if absent).
func (h *Header) SPIFFEID() string { return string(h.TLVs[TLVSPIFFEID]) }

// CorrelationID returns the unique-id TLV ("" if absent).
func (h *Header) CorrelationID() string { return string(h.TLVs[TLVUniqueID]) }

// AppendV2 appends a PROXY v2 header for a connection from src to dst
// carrying tlvs (type, value; values up to 65535 bytes, in order).
func AppendV2(b []byte, src, dst net.Addr, tlvs ...TLV) ([]byte, error) {
	var addr []byte
	fam := byte(0x00) // AF_UNSPEC
	s, sok := src.(*net.TCPAddr)
	d, dok := dst.(*net.TCPAddr)
	if sok && dok {
		if s4, d4 := s.IP.To4(), d.IP.To4(); s4 != nil && d4 != nil {
			fam = 0x11
			addr = append(append(addr, s4...), d4...)
		} else {
			fam = 0x21
			addr = append(append(addr, s.IP.To16()...), d.IP.To16()...)
		}
		addr = binary.BigEndian.AppendUint16(addr, uint16(s.Port))
		addr = binary.BigEndian.AppendUint16(addr, uint16(d.Port))
	}
	n := len(addr)
	for _, t := range tlvs {
		if len(t.Value) > 0xFFFF {
			return nil, fmt.Errorf("PROXY v2 TLV 0x%02x is %d bytes, more than 65535", t.Type, len(t.Value))
		}
		n += 3 + len(t.Value)
	}
	if n > 0xFFFF {
		return nil, fmt.Errorf("PROXY v2 header would be %d bytes, more than 65535", n)
	}
	b = append(b, proxyV2Sig...)
	b = append(b, 0x21, fam) // version 2, command PROXY
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, addr...)
	for _, t := range tlvs {
		b = append(b, t.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Value)))
		b = append(b, t.Value...)
	}
	return b, nil
}

// TLV is one type-length-value of a PROXY v2 header.
type TLV struct {
	Type  byte
	Value []byte
}

// ReadV2 reads and decodes a PROXY v2 header from r (an inbound proxy
// behind a gateway, apps behind a ward proxy, tests). Malformed input returns an error; at most 16 +
// 4096 bytes are consumed.
func ReadV2(r *bufio.Reader) (*Header, error) {
	head := make([]byte, 16)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, fmt.Errorf("PROXY v2 header: %w", err)
	}
	if !bytes.Equal(head[:12], proxyV2Sig) {
		return nil, errors.New("PROXY v2 header: bad signature (is the proxy's peer_identity proxy-v2?)")
	}
	if head[12]>>4 != 2 {
		return nil, fmt.Errorf("PROXY v2 header: version %d, want 2", head[12]>>4)
	}
	h := &Header{TLVs: map[byte][]byte{}}
	switch head[12] & 0x0F {
	case 0:
		h.Local = true
	case 1:
	default:
		return nil, fmt.Errorf("PROXY v2 header: unknown command %d", head[12]&0x0F)
	}
	n := int(binary.BigEndian.Uint16(head[14:]))
	if n > maxProxyV2Len {
		return nil, fmt.Errorf("PROXY v2 header: length %d over the limit %d", n, maxProxyV2Len)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("PROXY v2 header body: %w", err)
	}
	var alen int
	switch head[13] {
	case 0x00:
	case 0x11:
		alen = 12
	case 0x21:
		alen = 36
	case 0x31:
		alen = 216
	default:
		return nil, fmt.Errorf("PROXY v2 header: unsupported address family/protocol 0x%02x", head[13])
	}
	if len(body) < alen {
		return nil, fmt.Errorf("PROXY v2 header: %d bytes of addresses, need %d", len(body), alen)
	}
	if !h.Local {
		switch head[13] {
		case 0x11:
			h.Src = &net.TCPAddr{IP: net.IP(append([]byte(nil), body[0:4]...)), Port: int(binary.BigEndian.Uint16(body[8:]))}
			h.Dst = &net.TCPAddr{IP: net.IP(append([]byte(nil), body[4:8]...)), Port: int(binary.BigEndian.Uint16(body[10:]))}
		case 0x21:
			h.Src = &net.TCPAddr{IP: net.IP(append([]byte(nil), body[0:16]...)), Port: int(binary.BigEndian.Uint16(body[32:]))}
			h.Dst = &net.TCPAddr{IP: net.IP(append([]byte(nil), body[16:32]...)), Port: int(binary.BigEndian.Uint16(body[34:]))}
		}
	}
	rest := body[alen:]
	for len(rest) > 0 {
		if len(rest) < 3 {
			return nil, errors.New("PROXY v2 header: truncated TLV")
		}
		t, l := rest[0], int(binary.BigEndian.Uint16(rest[1:3]))
		if len(rest) < 3+l {
			return nil, fmt.Errorf("PROXY v2 header: TLV 0x%02x claims %d bytes, %d left", t, l, len(rest)-3)
		}
		h.TLVs[t] = append([]byte(nil), rest[3:3+l]...)
		rest = rest[3+l:]
	}
	return h, nil
}
