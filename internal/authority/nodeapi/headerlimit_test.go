package nodeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerFloodSize is the padding header's value in the attack's block:
// under grpc-go's default MaxHeaderListSize (16 MiB), far over the Node
// API's limits, and far more than loopback socket buffers hold, so a
// server that stops reading makes the writes fail.
const headerFloodSize = 15 << 20

// floodHeaderBlock runs the attack on one TLS connection: the HTTP/2
// preface, then one header block of headerFloodSize (HEADERS and
// CONTINUATION frames, never END_HEADERS; headers are not flow-controlled).
// It returns how many bytes of the block were written, the block's length
// (the value is Huffman-coded, ~9 MiB) and the error that stopped the
// writes (nil if the server accepted them all).
func floodHeaderBlock(t *testing.T, addr string, tc *tls.Config) (sent, total int, err error) {
	t.Helper()
	d := net.Dialer{LocalAddr: attacker, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dialing the Node API: %v", err)
	}
	t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, tc)
	if err := c.HandshakeContext(context.Background()); err != nil {
		t.Fatalf("TLS handshake with the Node API: %v", err)
	}
	// A bound, not a timing assertion: a server that neither reads nor
	// closes fails the test instead of hanging it.
	c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatalf("writing the HTTP/2 preface: %v", err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatalf("writing SETTINGS: %v", err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "POST"})
	enc.WriteField(hpack.HeaderField{Name: ":path", Value: attestMethod})
	enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", headerFloodSize)})
	blk := hb.Bytes()
	const chunk = 16 << 10
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:chunk]}); err != nil {
		return 0, len(blk), err
	}
	sent = chunk
	for ; sent+chunk < len(blk); sent += chunk { // never END_HEADERS
		if err := fr.WriteContinuation(1, false, blk[sent:sent+chunk]); err != nil {
			return sent, len(blk), err
		}
	}
	return sent, len(blk), nil
}

// TestAnonHeaderBlockFloodIsCutOff runs the attack on the certificate-less
// (attest-only) server: one never-ending 15 MiB header block per
// connection, from one source. Before, grpc-go's default 16 MiB header
// list limit let the server read and buffer all of it per connection
// (~128 MiB for 8 connections) before any stream existed; now the server
// closes the connection once the block passes maxAnonHeaderList, so the
// writes fail long before the block is sent.
func TestAnonHeaderBlockFloodIsCutOff(t *testing.T) {
	h := newHarness(t)
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeID(ServerID(testTD)))
	tc.NextProtos = []string{"h2"}
	for i := 0; i < maxAnonPerSource; i++ {
		sent, total, err := floodHeaderBlock(t, h.addr, tc)
		if err == nil {
			t.Fatalf("connection %d: the anonymous server accepted a %d MiB header block; want the connection closed past %d KiB", i, sent>>20, maxAnonHeaderList>>10)
		}
		if sent >= total/2 {
			t.Fatalf("connection %d: the anonymous server read %d MiB of one header block before closing (%v); want it closed near %d KiB", i, sent>>20, err, maxAnonHeaderList>>10)
		}
		t.Logf("connection %d: cut off after %d KiB: %v", i, sent>>10, err)
	}
}

// TestAuthHeaderBlockFloodIsCutOff runs the same attack with an agent
// SVID, on the main server: the block is cut off past maxAuthHeaderList.
func TestAuthHeaderBlockFloodIsCutOff(t *testing.T) {
	h := newHarness(t)
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsconfig.MTLSClientConfig(agent, b, tlsconfig.AuthorizeID(ServerID(testTD)))
	tc.NextProtos = []string{"h2"}
	sent, total, err := floodHeaderBlock(t, h.addr, tc)
	if err == nil {
		t.Fatalf("the main server accepted a %d MiB header block from an agent; want the connection closed past %d KiB", sent>>20, maxAuthHeaderList>>10)
	}
	if sent >= total/2 {
		t.Fatalf("the main server read %d MiB of one header block before closing (%v); want it closed near %d KiB", sent>>20, err, maxAuthHeaderList>>10)
	}
	t.Logf("cut off after %d KiB: %v", sent>>10, err)
}
