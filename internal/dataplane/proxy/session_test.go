package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/policy"
)

// resumedLines are the server's access-log lines of resumed handshakes
// of peer id.
func resumedLines(e *env, id string) []map[string]any {
	var out []map[string]any
	for _, m := range findLog(e.serverLog, "peer_id", id) {
		if m["tls_resumed"] == true {
			out = append(out, m)
		}
	}
	return out
}

// establishSession makes one full handshake and one resumed connection
// through the web client proxy, and checks both were decided.
func establishSession(t *testing.T, e *env) {
	t.Helper()
	for i := 0; i < 2; i++ {
		if _, err := request(e.clientWeb, fmt.Sprint("hello ", i)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	waitFor(t, "a resumed, allowed connection in the server's log", 10*time.Second, func() bool {
		for _, l := range resumedLines(e, webID) {
			if l["decision"] == "allow" {
				return true
			}
		}
		return false
	})
}

// TestSessionResumedAndDecidedPerConnection: the second connection of a
// client proxy resumes its session (no signatures), and the server still
// makes the connect decision for it: a forbidden peer that resumes is
// denied again, with the policy that forbids it named.
func TestSessionResumedAndDecidedPerConnection(t *testing.T) {
	e := newEnv(t)
	establishSession(t, e)
	if v := metric(t, e.server, "ward_proxy_tls_resumed_total", `direction="inbound"`, `listener="api"`); v < 1 {
		t.Fatalf("server counted %v resumed handshakes", v)
	}
	// ops/tool is forbidden: it gets a ticket with its first (denied)
	// connection, resumes with it, and is denied again.
	for i := 0; i < 3; i++ {
		if got, err := request(e.clientTool, "x"); err == nil {
			t.Fatalf("forbidden peer let through: %q", got)
		}
	}
	waitFor(t, "a resumed, denied connection of the forbidden peer", 10*time.Second, func() bool {
		for _, l := range resumedLines(e, toolID) {
			if l["decision"] == "deny" && l["outcome"] == "denied" && strings.Contains(fmt.Sprint(l["policies"]), "ops-may-not-connect") {
				return true
			}
		}
		return false
	})
}

// TestResumptionRefusedAfterRevocation runs the attack: a peer holding a
// session keeps connecting after its certificate serial, its SPIFFE ID or
// its intermediate CA key is revoked. Every attempt is refused (the server
// drops its ticket keys with the new policy version, so the ticket is not
// even opened; the decision would refuse it anyway, see
// TestResumedHandshakeVerifiedAgainstCurrentTrust); allowing the peer again
// lets it in.
func TestResumptionRefusedAfterRevocation(t *testing.T) {
	e := newEnv(t)
	serial := fmt.Sprintf("%x", e.web.Serial())
	k := activeIntermediateKeyID(t, e)
	for _, c := range []struct{ name, deny, cause string }{
		{"serial", `{"serials": ["` + serial + `"]}`, "deny-list"},
		{"spiffe_id", `{"spiffe_ids": ["` + webID + `"]}`, "deny-list"},
		{"tainted_key", `{"tainted_keys": ["` + k + `"]}`, "tainted-ca-key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.serverLog.Reset()
			establishSession(t, e)
			v0, _ := e.server.Engine().Status()
			refused0 := metric(t, e.server, "ward_proxy_tls_session_tickets_refused_total")
			e.writeDeny(c.deny)
			waitFor(t, "the deny-list in force", 10*time.Second, func() bool { v, _ := e.server.Engine().Status(); return v > v0 })
			for i := 0; i < 2; i++ {
				if got, err := request(e.clientWeb, "after"); err == nil {
					t.Fatalf("revoked peer (%s) connected: %q", c.name, got)
				}
			}
			waitFor(t, "denied lines", 10*time.Second, func() bool {
				n := 0
				for _, l := range findLog(e.serverLog, "outcome", "denied") {
					if l["peer_id"] == webID && l["cause"] == c.cause {
						n++
					}
				}
				return n >= 2
			})
			if v := metric(t, e.server, "ward_proxy_tls_session_tickets_refused_total", `reason="unknown_key"`); v <= refused0 {
				t.Fatalf("the old ticket was not offered and refused (refused %v, before %v)", v, refused0)
			}
			v1, _ := e.server.Engine().Status()
			e.writeDeny(`{}`)
			waitFor(t, "the deny-list emptied", 10*time.Second, func() bool { v, _ := e.server.Engine().Status(); return v > v1 })
			waitFor(t, "allowed again", 10*time.Second, func() bool { _, err := request(e.clientWeb, "again"); return err == nil })
		})
	}
}

// TestSessionNotResumedAfterSVIDRotation: once the server proxy holds a
// rotated SVID, a session made with its old one is not resumed; once the
// client proxy holds a rotated SVID, it never again offers (and so never
// resumes as) its old certificate.
func TestSessionNotResumedAfterSVIDRotation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	crt, key, bundle, err := e.tool.WriteFiles(e.dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	probeCert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	_ = bundle
	// serverSerial is the serial of the certificate the server proxy
	// presents now (a full handshake without a session cache).
	serverSerial := func() string {
		var got string
		cfg := &tls.Config{Certificates: []tls.Certificate{probeCert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
			VerifyConnection: func(cs tls.ConnectionState) error {
				got = fmt.Sprintf("%x", cs.PeerCertificates[0].SerialNumber)
				return nil
			}}
		c, err := tls.Dial("tcp", e.server.Addr("api").String(), cfg)
		if err == nil {
			c.Close()
		}
		return got
	}
	// exchange makes one request through the web client proxy and returns
	// the server's access-log line of that very connection. The line is
	// written when the connection ends, so a line of an earlier connection
	// can still arrive after a later request (under load): each request's
	// message has its own length and the line is the one with that
	// bytes_in (1000 + the request's number, and the newline), never
	// merely the last one.
	sent := 0
	exchange := func(t *testing.T) (map[string]any, error) {
		t.Helper()
		sent++
		msg := strings.Repeat("x", 1000+sent)
		if _, err := request(e.clientWeb, msg); err != nil {
			return nil, err
		}
		want := fmt.Sprint(len(msg) + 1) // and the newline
		var line map[string]any
		waitFor(t, "the server's log line of the connection", 10*time.Second, func() bool {
			for _, l := range findLog(e.serverLog, "peer_id", webID) {
				if fmt.Sprint(l["bytes_in"]) == want {
					line = l
					return true
				}
			}
			return false
		})
		return line, nil
	}

	t.Run("server", func(t *testing.T) {
		establishSession(t, e)
		newSerial, err := e.api.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the server proxy presenting its rotated SVID", 10*time.Second, func() bool { return serverSerial() == fmt.Sprintf("%x", newSerial) })
		l, err := exchange(t)
		if err != nil {
			t.Fatal(err)
		}
		if l["tls_resumed"] != nil {
			t.Fatalf("a session of the server's old SVID was resumed: %v", l)
		}
	})
	t.Run("client", func(t *testing.T) {
		establishSession(t, e)
		old := fmt.Sprintf("%x", e.web.Serial())
		newSerial, err := e.web.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%x", newSerial)
		waitFor(t, "the client proxy presenting its rotated SVID", 10*time.Second, func() bool {
			l, err := exchange(t)
			return err == nil && l["peer_serial"] == want
		})
		for i := 0; i < 3; i++ {
			l, err := exchange(t)
			if err != nil {
				t.Fatal(err)
			}
			if l["peer_serial"] != want {
				t.Fatalf("after rotating to %s the client connected as %v (old %s): %v", want, l["peer_serial"], old, l)
			}
		}
	})
}

// TestForeignGoClientTicketSameRules: a plain Go TLS client with a session
// cache (not a ward proxy) resumes against the inbound listener, and its
// resumed connections are verified and decided as any: once its serial is
// on the deny-list, neither a resumption nor a full handshake gets
// through.
func TestForeignGoClientTicketSameRules(t *testing.T) {
	e := newEnv(t)
	crt, key, bundle, err := e.web.WriteFiles(e.dir, "foreign")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	cache := tls.NewLRUClientSessionCache(8)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: apiDNS, MinVersion: tls.VersionTLS13, ClientSessionCache: cache}
	dial := func() (bool, string, error) {
		c, err := tls.Dial("tcp", e.server.Addr("api").String(), cfg)
		if err != nil {
			return false, "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintln(c, "hi"); err != nil {
			return c.ConnectionState().DidResume, "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return c.ConnectionState().DidResume, line, err
	}
	if _, line, err := dial(); err != nil || !strings.HasPrefix(line, webID) {
		t.Fatalf("first connection: %q %v", line, err)
	}
	resumed, line, err := dial()
	if err != nil || !strings.HasPrefix(line, webID) || !resumed {
		t.Fatalf("second connection: resumed %v, %q, %v", resumed, line, err)
	}
	v0, _ := e.server.Engine().Status()
	e.writeDeny(`{"serials": ["` + fmt.Sprintf("%x", e.web.Serial()) + `"]}`)
	waitFor(t, "deny-list in force", 10*time.Second, func() bool { v, _ := e.server.Engine().Status(); return v > v0 })
	for i := 0; i < 2; i++ {
		if _, line, err := dial(); err == nil && line != "" {
			t.Fatalf("revoked foreign client got through: %q", line)
		}
	}
	waitFor(t, "denied lines", 10*time.Second, func() bool {
		n := 0
		for _, l := range findLog(e.serverLog, "outcome", "denied") {
			if l["peer_id"] == webID && l["cause"] == policy.CauseDenyList.String() {
				n++
			}
		}
		return n >= 2
	})
}
