package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/crypto/cryptobyte"
)

// Bounds of reading a ClientHello (the gateway reads nothing else of a
// connection before it routes it).
const (
	// DefaultMaxClientHello is the default bound on the ClientHello
	// handshake message (its 4-byte header excluded): ward's own
	// ClientHellos with the hybrid post-quantum key share are about 1.5 KiB.
	DefaultMaxClientHello = 16 << 10
	// MinMaxClientHello and MaxMaxClientHello bound max_client_hello.
	MinMaxClientHello = 1 << 10
	MaxMaxClientHello = 32 << 10
	// MaxHelloRecords bounds the TLS records one ClientHello may span (a
	// maximal 32 KiB ClientHello needs 3 records of 2^14 bytes; clients
	// send one or two): with max_client_hello it bounds the bytes read.
	MaxHelloRecords = 256
)

// TLS wire constants (RFC 8446).
const (
	recordHeaderLen     = 5
	recordTypeHandshake = 22
	maxRecordPlaintext  = 1 << 14 // TLSPlaintext.length (§5.1)
	typeClientHello     = 1
	extServerName       = 0     // RFC 6066 §3
	extALPN             = 16    // RFC 7301
	extSupportedVersion = 43    // RFC 8446 §4.2.1
	extECH              = 65037 // encrypted_client_hello (draft-ietf-tls-esni)
	hostNameType        = 0
)

// Reasons a ClientHello is refused (label values of
// ward_gateway_refused_total; docs/gateway.md).
const (
	ReasonNotTLS    = "not_tls"     // the first bytes are no TLS handshake record (plaintext HTTP, SSLv2, PROXY header...)
	ReasonTooLarge  = "too_large"   // the ClientHello is longer than max_client_hello
	ReasonMalformed = "malformed"   // the records or the ClientHello break RFC 8446 / RFC 6066
	ReasonTimeout   = "timeout"     // no complete ClientHello within client_hello_timeout
	ReasonEOF       = "eof"         // the client closed (or reset) before a complete ClientHello
	ReasonNoSNI     = "no_sni"      // a valid ClientHello without server_name
	ReasonUnknown   = "unknown_sni" // a server name no route exports
)

// HelloError is why a ClientHello could not be read; Reason is one of the
// Reason constants.
type HelloError struct {
	Reason string
	Err    error
}

func (e *HelloError) Error() string { return "ClientHello: " + e.Reason + ": " + e.Err.Error() }
func (e *HelloError) Unwrap() error { return e.Err }

func helloErr(reason, format string, a ...any) *HelloError {
	return &HelloError{Reason: reason, Err: fmt.Errorf(format, a...)}
}

// Hello is what the gateway learns from a ClientHello. It never holds
// anything secret: a ClientHello is sent in the clear.
type Hello struct {
	// Raw is every byte read from the connection: the TLS records that
	// carry the ClientHello, to be forwarded unchanged.
	Raw []byte
	// Records is how many TLS records carried the ClientHello.
	Records int
	// ServerName is the server_name extension's host_name ("" when the
	// extension is absent).
	ServerName string
	// LegacyVersion is ClientHello.legacy_version; SupportedVersions the
	// supported_versions extension (TLS 1.3 clients).
	LegacyVersion     uint16
	SupportedVersions []uint16
	// ALPN lists the offered application protocols.
	ALPN []string
	// ECH is true when the client offered encrypted_client_hello; the
	// gateway routes by the outer ServerName then.
	ECH bool
}

// ReadClientHello reads the TLS records that carry one ClientHello from r,
// reassembling a ClientHello that spans several records, and parses it.
// It reads nothing beyond the record that ends the ClientHello, refuses a
// ClientHello longer than maxHello bytes before reading it, and reads at
// most MaxHelloRecords records. Deadlines are the caller's (a net.Conn's
// read deadline). Errors are *HelloError.
func ReadClientHello(r io.Reader, maxHello int) (*Hello, error) {
	h := &Hello{Raw: make([]byte, 0, 2048)}
	var msg []byte // the handshake bytes reassembled from the records
	for {
		if h.Records == MaxHelloRecords {
			return nil, helloErr(ReasonMalformed, "more than %d records before the ClientHello ended", MaxHelloRecords)
		}
		off := len(h.Raw)
		h.Raw = append(h.Raw, make([]byte, recordHeaderLen)...)
		if err := readFull(r, h.Raw[off:], h.Records == 0 && off == 0); err != nil {
			return nil, err
		}
		hdr := h.Raw[off:]
		if hdr[0] != recordTypeHandshake || hdr[1] != 3 {
			if h.Records == 0 {
				return nil, helloErr(ReasonNotTLS, "first bytes %q are not a TLS handshake record", printable(hdr))
			}
			// RFC 8446 §5.1: handshake messages must not be interleaved
			// with other record types.
			return nil, helloErr(ReasonMalformed, "record %d has type %d version 0x%02x%02x inside the ClientHello", h.Records+1, hdr[0], hdr[1], hdr[2])
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		switch {
		case n == 0:
			return nil, helloErr(ReasonMalformed, "empty handshake record (RFC 8446 §5.1)")
		case n > maxRecordPlaintext:
			return nil, helloErr(ReasonMalformed, "record of %d bytes, more than 2^14 (RFC 8446 §5.1)", n)
		}
		// Refuse before reading when the message is known to be too long,
		// or when this record alone would exceed the bound.
		if len(msg)+n > 4+maxHello {
			return nil, helloErr(ReasonTooLarge, "more than %d bytes of handshake data (max_client_hello)", maxHello)
		}
		off = len(h.Raw)
		h.Raw = append(h.Raw, make([]byte, n)...)
		if err := readFull(r, h.Raw[off:], false); err != nil {
			return nil, err
		}
		msg = append(msg, h.Raw[off:]...)
		h.Records++
		if len(msg) < 4 {
			continue
		}
		if msg[0] != typeClientHello {
			return nil, helloErr(ReasonMalformed, "handshake message type %d, want 1 (ClientHello)", msg[0])
		}
		size := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if size > maxHello {
			return nil, helloErr(ReasonTooLarge, "ClientHello of %d bytes, more than max_client_hello (%d)", size, maxHello)
		}
		if len(msg) < 4+size {
			continue
		}
		if len(msg) > 4+size {
			// Nothing may follow a ClientHello before the server answers.
			return nil, helloErr(ReasonMalformed, "%d bytes of handshake data after the ClientHello", len(msg)-4-size)
		}
		if err := parseClientHello(h, msg[4:]); err != nil {
			return nil, err
		}
		return h, nil
	}
}

// readFull fills b from r and classifies a failure; first says no byte of
// the connection has arrived yet.
func readFull(r io.Reader, b []byte, first bool) error {
	n, err := io.ReadFull(r, b)
	if err == nil {
		return nil
	}
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return &HelloError{Reason: ReasonTimeout, Err: fmt.Errorf("no complete ClientHello within client_hello_timeout: %w", err)}
	case first && n == 0 && errors.Is(err, io.EOF):
		return &HelloError{Reason: ReasonEOF, Err: errors.New("the client closed without sending a byte")}
	}
	return &HelloError{Reason: ReasonEOF, Err: fmt.Errorf("the client closed before a complete ClientHello: %w", err)}
}

// parseClientHello parses the body of a ClientHello handshake message
// (RFC 8446 §4.1.2; TLS 1.2 ClientHellos, RFC 5246 §7.4.1.2, have the same
// shape) into h.
func parseClientHello(h *Hello, body []byte) error {
	s := cryptobyte.String(body)
	var random []byte
	var sessionID, suites, compression cryptobyte.String
	if !s.ReadUint16(&h.LegacyVersion) || !s.ReadBytes(&random, 32) ||
		!s.ReadUint8LengthPrefixed(&sessionID) || !s.ReadUint16LengthPrefixed(&suites) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return helloErr(ReasonMalformed, "truncated ClientHello")
	}
	switch {
	case h.LegacyVersion>>8 != 3 || h.LegacyVersion < 0x0301:
		return helloErr(ReasonMalformed, "legacy_version 0x%04x is not TLS 1.0 or later", h.LegacyVersion)
	case len(sessionID) > 32:
		return helloErr(ReasonMalformed, "legacy_session_id of %d bytes, more than 32", len(sessionID))
	case len(suites) < 2 || len(suites)%2 != 0:
		return helloErr(ReasonMalformed, "cipher_suites of %d bytes", len(suites))
	case len(compression) < 1:
		return helloErr(ReasonMalformed, "no compression method")
	}
	if s.Empty() {
		return nil // TLS 1.2 and older may omit the extensions
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return helloErr(ReasonMalformed, "extensions do not end the ClientHello")
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return helloErr(ReasonMalformed, "truncated extension")
		}
		if seen[typ] {
			return helloErr(ReasonMalformed, "extension %d appears twice (RFC 8446 §4.2)", typ)
		}
		seen[typ] = true
		var err error
		switch typ {
		case extServerName:
			h.ServerName, err = parseServerName(data)
		case extSupportedVersion:
			h.SupportedVersions, err = parseVersions(data)
		case extALPN:
			h.ALPN, err = parseALPN(data)
		case extECH:
			h.ECH = true
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseServerName reads a ServerNameList (RFC 6066 §3): at most one
// host_name, which must be a DNS host name without a trailing dot.
func parseServerName(data cryptobyte.String) (string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return "", helloErr(ReasonMalformed, "server_name extension is not one non-empty ServerNameList")
	}
	var host string
	for !list.Empty() {
		var typ uint8
		var name cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&name) {
			return "", helloErr(ReasonMalformed, "truncated server_name entry")
		}
		if typ != hostNameType {
			continue // no other name type is defined; ignored like crypto/tls does
		}
		if host != "" {
			return "", helloErr(ReasonMalformed, "more than one host_name in server_name (RFC 6066 §3)")
		}
		if err := checkHostName(name); err != nil {
			return "", err
		}
		host = string(name)
	}
	return host, nil
}

// checkHostName accepts ASCII DNS names (letters, digits, '-', '_', '.'),
// 1..253 bytes, no empty label, no trailing dot.
func checkHostName(name []byte) error {
	if len(name) == 0 || len(name) > 253 {
		return helloErr(ReasonMalformed, "host_name of %d bytes (1..253)", len(name))
	}
	label := 0
	for i, c := range name {
		switch {
		case c == '.':
			if label == 0 || i == len(name)-1 {
				return helloErr(ReasonMalformed, "host_name %q has an empty label or a trailing dot", printable(name))
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return helloErr(ReasonMalformed, "host_name %q has byte 0x%02x", printable(name), c)
		}
		if label++; label > 63 {
			return helloErr(ReasonMalformed, "host_name %q has a label longer than 63 bytes", printable(name))
		}
	}
	return nil
}

func parseVersions(data cryptobyte.String) ([]uint16, error) {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list) < 2 || len(list)%2 != 0 {
		return nil, helloErr(ReasonMalformed, "malformed supported_versions")
	}
	var vs []uint16
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		vs = append(vs, v)
	}
	return vs, nil
}

func parseALPN(data cryptobyte.String) ([]string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, helloErr(ReasonMalformed, "malformed application_layer_protocol_negotiation")
	}
	var protos []string
	for !list.Empty() {
		var p cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, helloErr(ReasonMalformed, "malformed ALPN protocol name")
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// printable quotes at most 32 bytes of b for an error message.
func printable(b []byte) string {
	if len(b) > 32 {
		b = b[:32]
	}
	return string(b)
}
