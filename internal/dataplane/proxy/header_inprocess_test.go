package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/internal/dataplane/proxy"
)

// TestHTTPHeaderSpoofedSpellings runs the red-team request: an allowed
// caller sends its own identity headers under spellings that the app's
// server folds into X-Ward-Peer-Id / X-Ward-Correlation-Id (X_Ward_Peer_Id
// and friends). The app must see only the proxy's values: exactly one
// peer-ID header, carrying the verified SPIFFE ID.
func TestHTTPHeaderSpoofedSpellings(t *testing.T) {
	// The app reports every header whose name folds (case, '-' vs '_')
	// to a ward header, as CGI/WSGI/nginx would present it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var seen []string
		for k, vs := range r.Header {
			f := strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(k))
			if strings.HasPrefix(f, "X_WARD_") || strings.HasPrefix(f, "X_FORWARDED_") {
				for _, v := range vs {
					seen = append(seen, k+"="+v)
				}
			}
		}
		sort.Strings(seen)
		fmt.Fprint(w, strings.Join(seen, "\n"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Inbound[0].PeerIdentity = proxy.PeerIdentityHTTPHeader
		c.Inbound[0].Forward = l.Addr().String()
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(e.web.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	conn, err := tls.Dial("tcp", e.server.Addr("api").String(),
		tlsconfig.MTLSClientConfig(xs, xs, tlsconfig.AuthorizeID(spiffeid.RequireFromString(apiID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	spoof := "spiffe://evil.example/spoofed"
	// Raw header lines, exactly as an attacker writes them.
	req := "GET / HTTP/1.1\r\nHost: api\r\n"
	for _, name := range []string{"X_Ward_Peer_Id", "x_ward_peer_id", "X-WARD-PEER-ID", "X-Ward_Peer-Id", "X.Ward.Peer.Id",
		"X_Ward_Correlation_Id", "x-ward-correlation-id", "X_Forwarded_For"} {
		req += name + ": " + spoof + "\r\n"
	}
	req += "Connection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	lines := strings.Split(string(body), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], proxy.HeaderCorrelationID+"=") || lines[1] != proxy.HeaderPeerID+"="+webID {
		t.Fatalf("app saw identity headers:\n%s\nwant only the proxy's %s and %s=%s", body, proxy.HeaderCorrelationID, proxy.HeaderPeerID, webID)
	}
	if strings.Contains(string(body), spoof) {
		t.Fatalf("a spoofed value reached the app:\n%s", body)
	}
}
