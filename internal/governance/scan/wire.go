package scan

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/crypto/cryptobyte"
)

// The TLS wire format ward's probes speak: a ClientHello it builds itself
// (so it can offer what Go's TLS client refuses to), and a bounded reader
// of what the server answers, up to the ServerHello (TLS 1.3) or the end
// of the server's first flight (TLS 1.2 and below, which is in clear).

const (
	recordHandshake        = 22
	recordAlert            = 21
	recordChangeCipherSpec = 20

	msgClientHello        = 1
	msgServerHello        = 2
	msgCertificate        = 11
	msgServerKeyExchange  = 12
	msgCertificateRequest = 13
	msgServerHelloDone    = 14
	msgCertificateStatus  = 22

	extServerName          = 0
	extStatusRequest       = 5
	extSupportedGroups     = 10
	extECPointFormats      = 11
	extSignatureAlgorithms = 13
	extSupportedVersions   = 43
	extKeyShare            = 51
	extRenegotiationInfo   = 0xff01

	// maxRecord is the largest record a server may send (2^14 plus the
	// largest expansion TLS allows); maxFlight bounds what one probe reads.
	maxRecord = 16384 + 2048
	maxFlight = 256 << 10
)

// helloRetryRandom is the Random of a HelloRetryRequest (RFC 8446 4.1.3).
var helloRetryRandom = []byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// hello is what one probe offers.
type hello struct {
	version    Version  // the highest version offered (TLS 1.3: supported_versions)
	suites     []uint16 // offered cipher suites, in order
	groups     []uint16 // supported_groups, in order (none: extension left out)
	serverName string   // SNI host name ("" for none)
	// keyShares are the TLS 1.3 key shares offered; none makes a server
	// that accepts the hello answer with a HelloRetryRequest naming the
	// group it chose, which is all a probe needs.
	keyShares []keyShare
}

type keyShare struct {
	group uint16
	data  []byte
}

// marshal builds the ClientHello record.
func (h *hello) marshal() ([]byte, error) {
	var random, sessionID [32]byte
	if _, err := io.ReadFull(rand.Reader, random[:]); err != nil {
		return nil, err
	}
	legacy := h.version
	if legacy > TLS12 {
		legacy = TLS12
		if _, err := io.ReadFull(rand.Reader, sessionID[:]); err != nil {
			return nil, err
		}
	}
	var msg cryptobyte.Builder
	msg.AddUint8(msgClientHello)
	msg.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(uint16(legacy))
		b.AddBytes(random[:])
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
			if h.version == TLS13 {
				b.AddBytes(sessionID[:])
			}
		})
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, s := range h.suites {
				b.AddUint16(s)
			}
			if h.version < TLS13 {
				b.AddUint16(0x00FF) // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // no compression
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { h.addExtensions(b) })
	})
	body, err := msg.Bytes()
	if err != nil {
		return nil, err
	}
	// Record version: TLS 1.0 for every hello but SSLv3's, as clients do.
	rv := uint16(TLS10)
	if h.version == SSL30 {
		rv = uint16(SSL30)
	}
	rec := make([]byte, 0, 5+len(body))
	rec = append(rec, recordHandshake, byte(rv>>8), byte(rv), byte(len(body)>>8), byte(len(body)))
	return append(rec, body...), nil
}

func (h *hello) addExtensions(b *cryptobyte.Builder) {
	ext := func(typ uint16, f func(*cryptobyte.Builder)) {
		b.AddUint16(typ)
		b.AddUint16LengthPrefixed(f)
	}
	if h.serverName != "" {
		ext(extServerName, func(b *cryptobyte.Builder) {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint8(0) // host_name
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(h.serverName)) })
			})
		})
	}
	ext(extStatusRequest, func(b *cryptobyte.Builder) {
		b.AddUint8(1)  // ocsp
		b.AddUint16(0) // no responder IDs
		b.AddUint16(0) // no extensions
	})
	if len(h.groups) > 0 {
		ext(extSupportedGroups, func(b *cryptobyte.Builder) {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				for _, g := range h.groups {
					b.AddUint16(g)
				}
			})
		})
		ext(extECPointFormats, func(b *cryptobyte.Builder) {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // uncompressed
		})
	}
	if h.version >= TLS12 {
		ext(extSignatureAlgorithms, func(b *cryptobyte.Builder) {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				for _, s := range signatureSchemes {
					b.AddUint16(s)
				}
			})
		})
	}
	if h.version < TLS13 {
		ext(extRenegotiationInfo, func(b *cryptobyte.Builder) { b.AddUint8(0) })
		return
	}
	ext(extSupportedVersions, func(b *cryptobyte.Builder) {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(uint16(TLS13)) })
	})
	ext(extKeyShare, func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, ks := range h.keyShares {
				b.AddUint16(ks.group)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ks.data) })
			}
		})
	})
}

// serverHello is what a probe learned from the server's answer.
type serverHello struct {
	version Version // negotiated (supported_versions when present)
	suite   uint16
	hrr     bool   // a HelloRetryRequest
	group   uint16 // TLS 1.3: the key_share group (selected group of an HRR)

	// The rest of a TLS 1.2-and-below flight, when read:
	certs       [][]byte // Certificate, leaf first
	ocsp        []byte   // CertificateStatus (OCSP response)
	curve       uint16   // ServerKeyExchange named curve (ECDHE suites)
	certRequest bool     // CertificateRequest seen
	done        bool     // ServerHelloDone seen
}

// AlertError is a TLS alert the server sent instead of a ServerHello.
type AlertError struct{ Level, Description uint8 }

func (a *AlertError) Error() string {
	return fmt.Sprintf("server sent alert %d (%s)", a.Description, alertName(a.Description))
}

func alertName(d uint8) string {
	switch d {
	case 0:
		return "close_notify"
	case 10:
		return "unexpected_message"
	case 20:
		return "bad_record_mac"
	case 40:
		return "handshake_failure"
	case 42:
		return "bad_certificate"
	case 47:
		return "illegal_parameter"
	case 50:
		return "decode_error"
	case 70:
		return "protocol_version"
	case 71:
		return "insufficient_security"
	case 80:
		return "internal_error"
	case 86:
		return "inappropriate_fallback"
	case 109:
		return "missing_extension"
	case 112:
		return "unrecognized_name"
	case 116:
		return "certificate_required"
	}
	return "alert"
}

// errNotTLS: what the server sent is not a TLS record.
var errNotTLS = errors.New("the server's answer is not TLS")

// readServerHello reads the server's answer from r: records up to the
// ServerHello, and with flight also the rest of a cleartext (TLS 1.2 and
// below) flight up to ServerHelloDone. It reads at most maxFlight bytes and
// never a record longer than maxRecord.
func readServerHello(r io.Reader, flight bool) (*serverHello, error) {
	var (
		hs    []byte // handshake bytes not yet parsed
		total int
		sh    *serverHello
		hdr   [5]byte
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if sh != nil { // the flight was cut short: keep what was read
				return sh, nil
			}
			return nil, readErr(err)
		}
		typ, n := hdr[0], int(hdr[3])<<8|int(hdr[4])
		if typ < recordChangeCipherSpec || typ > 24 || hdr[1] != 3 {
			if sh != nil {
				return sh, nil
			}
			return nil, errNotTLS
		}
		if n > maxRecord {
			return nil, fmt.Errorf("record of %d bytes: longer than TLS allows", n)
		}
		total += 5 + n
		if total > maxFlight {
			if sh != nil {
				return sh, nil
			}
			return nil, fmt.Errorf("server sent more than %d bytes before its ServerHello", maxFlight)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			if sh != nil {
				return sh, nil
			}
			return nil, readErr(err)
		}
		switch typ {
		case recordAlert:
			if sh != nil {
				return sh, nil
			}
			if n < 2 {
				return nil, errors.New("truncated alert")
			}
			return nil, &AlertError{Level: body[0], Description: body[1]}
		case recordHandshake:
			hs = append(hs, body...)
		default: // ChangeCipherSpec (TLS 1.3 compatibility), or encrypted data
			if sh != nil {
				return sh, nil
			}
			continue
		}
		for len(hs) >= 4 {
			mlen := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if mlen > maxFlight {
				return nil, fmt.Errorf("handshake message of %d bytes", mlen)
			}
			if len(hs) < 4+mlen {
				break
			}
			mtyp, m := hs[0], hs[4:4+mlen]
			hs = hs[4+mlen:]
			if sh == nil {
				if mtyp != msgServerHello {
					return nil, fmt.Errorf("expected ServerHello, got handshake message %d", mtyp)
				}
				var err error
				if sh, err = parseServerHello(m); err != nil {
					return nil, err
				}
				if !flight || sh.hrr || sh.version >= TLS13 {
					return sh, nil
				}
				continue
			}
			if err := sh.parseFlightMessage(mtyp, m); err != nil {
				return sh, nil // keep what the ServerHello said
			}
			if sh.done {
				return sh, nil
			}
		}
	}
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errClosed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimeout
	}
	return err
}

var (
	errClosed  = errors.New("the server closed the connection")
	errTimeout = errors.New("the server did not answer in time")
)

// parseServerHello parses a ServerHello message body (or a
// HelloRetryRequest, which has the same form).
func parseServerHello(m []byte) (*serverHello, error) {
	s := cryptobyte.String(m)
	var (
		vers       uint16
		random     []byte
		sessionID  cryptobyte.String
		comp       uint8
		sh         serverHello
		extensions cryptobyte.String
	)
	if !s.ReadUint16(&vers) || !s.ReadBytes(&random, 32) || !s.ReadUint8LengthPrefixed(&sessionID) ||
		!s.ReadUint16(&sh.suite) || !s.ReadUint8(&comp) {
		return nil, errors.New("malformed ServerHello")
	}
	sh.version = Version(vers)
	sh.hrr = bytes.Equal(random, helloRetryRandom)
	if s.Empty() {
		return &sh, nil
	}
	if !s.ReadUint16LengthPrefixed(&extensions) || !s.Empty() {
		return nil, errors.New("malformed ServerHello extensions")
	}
	for !extensions.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !extensions.ReadUint16(&typ) || !extensions.ReadUint16LengthPrefixed(&data) {
			return nil, errors.New("malformed ServerHello extension")
		}
		switch typ {
		case extSupportedVersions:
			var v uint16
			if !data.ReadUint16(&v) {
				return nil, errors.New("malformed supported_versions")
			}
			sh.version = Version(v)
		case extKeyShare:
			if !data.ReadUint16(&sh.group) {
				return nil, errors.New("malformed key_share")
			}
		}
	}
	return &sh, nil
}

// parseFlightMessage takes one handshake message after a TLS 1.2 (or
// older) ServerHello.
func (sh *serverHello) parseFlightMessage(typ uint8, m []byte) error {
	s := cryptobyte.String(m)
	switch typ {
	case msgCertificate:
		var list cryptobyte.String
		if !s.ReadUint24LengthPrefixed(&list) {
			return errors.New("malformed Certificate")
		}
		for !list.Empty() {
			var c cryptobyte.String
			if !list.ReadUint24LengthPrefixed(&c) {
				return errors.New("malformed Certificate entry")
			}
			sh.certs = append(sh.certs, append([]byte(nil), c...))
		}
	case msgCertificateStatus:
		var st uint8
		var resp cryptobyte.String
		if !s.ReadUint8(&st) || st != 1 || !s.ReadUint24LengthPrefixed(&resp) {
			return errors.New("malformed CertificateStatus")
		}
		sh.ocsp = append([]byte(nil), resp...)
	case msgServerKeyExchange:
		var curveType uint8
		if SuiteByID(sh.suite).ecdhe() && s.ReadUint8(&curveType) && curveType == 3 {
			if !s.ReadUint16(&sh.curve) {
				return errors.New("malformed ServerKeyExchange")
			}
		}
	case msgCertificateRequest:
		sh.certRequest = true
	case msgServerHelloDone:
		sh.done = true
	}
	return nil
}
