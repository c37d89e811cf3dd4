package nodeapi

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestServerIdentity: the Node API presents spiffe://TD/ward/server over
// TLS 1.3 only, and takes no workload SVID for an agent.
func TestServerIdentity(t *testing.T) {
	h := newHarness(t)
	bundle, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	// A client expecting another SPIFFE ID refuses the server.
	tc := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(testTD, "/not-the-server")))
	c, err := tls.Dial("tcp", h.addr, tc)
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded against the wrong expected server ID")
	}
	// The real one: TLS 1.3, server SVID spiffe://TD/ward/server.
	tc = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ServerID(testTD)))
	tc.NextProtos = []string{"h2"}
	c, err = tls.Dial("tcp", h.addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Fatalf("TLS version %x, want 1.3", st.Version)
	}
	if id, _ := x509svid.IDFromCert(st.PeerCertificates[0]); id != ServerID(testTD) {
		t.Fatalf("server presents %s", id)
	}
	// TLS 1.2 is refused.
	tc12 := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ServerID(testTD)))
	tc12.MaxVersion = tls.VersionTLS12
	if c12, err := tls.Dial("tcp", h.addr, tc12); err == nil {
		c12.Close()
		t.Fatal("TLS 1.2 accepted")
	}
	// A client certificate that is not an agent SVID is refused: here, a
	// workload SVID the agent had signed for its entry.
	agent := h.agentCaller(t)
	der, key := csr(t)
	res, err := h.client(t, agent.svid).SignX509SVIDs(context.Background(), &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{EntryId: agent.entry, Csr: der}}})
	if err != nil || res.Results[0].Error != nil {
		t.Fatalf("signing the workload SVID: %v %v", err, res.GetResults())
	}
	workload := svidOf(t, res.Results[0].Chain, key)
	if _, err := h.client(t, workload).Sync(context.Background(), &wardv1.SyncRequest{}); err == nil {
		t.Fatal("a workload SVID was accepted as an agent")
	}
}
