package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
)

// TestOversizedPeerChainNotKept runs the attack on the session cache's
// memory: a server with the expected ID (a compromised workload, a hostile
// peer of a federated domain) sends its leaf followed by ~100 extra
// certificates the verification never uses. crypto/tls parses them in
// place, so a kept session would hold the whole Certificate message; the
// session is not kept (full handshakes only) and the server issues no
// usable ticket for such a chain. The same pair with an ordinary chain
// resumes.
func TestOversizedPeerChainNotKept(t *testing.T) {
	sp := newSessionPair(t)
	sp.mustResume("a.example", false)
	sp.mustResume("a.example", true) // the ordinary chain resumes

	big := newSessionPair(t)
	s, _ := big.srvSrc.GetX509SVID()
	padded := *s
	padded.Certificates = append([]*x509.Certificate{s.Certificates[0]}, repeatCert(big.ca.cert, 100)...)
	if chainSize(padded.Certificates) <= maxSessionChain {
		t.Fatalf("padded chain of %d bytes is not over the bound", chainSize(padded.Certificates))
	}
	big.srvSrc.setSVID(&padded)
	big.client.dropSessions()
	for i := range 3 {
		big.mustResume("a.example", false)
		if n := big.client.sessions.len(); n != 0 {
			t.Fatalf("handshake %d: %d sessions kept for a server sending a %d-byte chain", i, n, chainSize(padded.Certificates))
		}
	}

	// The server side: a client sending such a chain gets no ticket that
	// opens.
	cli, _ := sp.cliSrc.GetX509SVID()
	pc := *cli
	pc.Certificates = append([]*x509.Certificate{cli.Certificates[0]}, repeatCert(sp.ca.cert, 100)...)
	sp.cliSrc.setSVID(&pc)
	sp.client.dropSessions()
	sp.server.dropSessions()
	sp.mustResume("a.example", false)
	sp.mustResume("a.example", false) // the ticket it holds opens nothing
	st := &serverSession{listener: "api"}
	st.own, _ = sp.server.certs.current(sp.srvSrc)
	cs := tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: pc.Certificates}
	if ticket := sp.server.wrapSession(st, cs, nil); len(ticket) != ticketMinSize {
		t.Fatalf("a %d-byte ticket was sealed for a client sending an oversized chain", len(ticket))
	}
	// The key prefix writes each part's whole length.
	long := strings.Repeat("x", 1<<16+1)
	if sessionKeyPrefix("o", long, "", "", st.own) == sessionKeyPrefix("o", long+"y", "", "", st.own) {
		t.Fatal("two server IDs longer than 64 KiB share a session key")
	}
}

func repeatCert(c *x509.Certificate, n int) []*x509.Certificate {
	out := make([]*x509.Certificate, n)
	for i := range out {
		out[i] = c
	}
	return out
}
