package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestRemoteRefusalIsVisibleOnTheCallingSide: when the inbound proxy's
// policy denies a caller, the caller's outbound proxy learns it (the
// verdict frame, verdict.go) and its access log says "refused by the
// remote policy" with the policy version, cause and the server's
// correlation id; an allowed caller's bytes flow as before, and a server
// whose app is down says so too.
func TestRemoteRefusalIsVisibleOnTheCallingSide(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	toolLog := &syncbuf.Buffer{}
	tool := e.clientProxy(ctx, e.tool, toolLog)
	if got, err := request(tool, "hello"); err == nil {
		t.Fatalf("denied client got a reply %q", got)
	}
	waitFor(t, "the caller's access log line", 10*time.Second, func() bool { return len(findLog(toolLog, "peer_id", apiID)) > 0 })
	waitFor(t, "the server's access log line", 10*time.Second, func() bool { return len(findLog(e.serverLog, "peer_id", toolID)) > 0 })
	l := findLog(toolLog, "peer_id", apiID)[0]
	server := findLog(e.serverLog, "peer_id", toolID)
	errText, _ := l["error"].(string)
	if l["outcome"] != "refused_by_remote" || !strings.Contains(errText, "refused by the remote policy") ||
		!strings.Contains(errText, "forbid") || !strings.Contains(errText, server[0]["correlation_id"].(string)) {
		t.Fatalf("caller's access log line: %v", l)
	}
	if got, err := request(e.clientWeb, "hi"); err != nil || got != webID+" hi" {
		t.Fatalf("allowed client: %q %v", got, err)
	}

	// The app behind the server proxy is down.
	e.app.l.Close()
	waitFor(t, "the app's listener closed", 10*time.Second, func() bool {
		_, err := request(e.clientWeb, "x")
		return err != nil
	})
	waitFor(t, "the caller's line for the unreachable app", 10*time.Second, func() bool {
		return e.clientLog.Contains("its app is not reachable")
	})
}

// TestVerdictOnlyForWardClients: a client that offers other ALPN
// protocols (as curl and gRPC clients do) and not the verdict gets no
// extra byte before the app's.
func TestVerdictOnlyForWardClients(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(e.web.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	tc := tlsconfig.MTLSClientConfig(xs, xs, tlsconfig.AuthorizeID(spiffeid.RequireFromString(apiID)))
	tc.NextProtos = []string{"h2", "http/1.1"}
	c, err := tls.Dial("tcp", e.server.Addr("api").String(), tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p == proxy.ALPNVerdict {
		t.Fatalf("negotiated %q with a client that did not offer it", p)
	}
	if got, err := roundTrip(c, bufio.NewReader(c), "plain"); err != nil || got != webID+" plain" {
		t.Fatalf("got %q %v, want the app's bytes only", got, err)
	}
}
