package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/gateway"
	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/proxyproto"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/proxytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

const (
	tdName = "prod.example"
	apiID  = "spiffe://prod.example/ns/shop/api"
	webID  = "spiffe://prod.example/ns/shop/web"
	apiSNI = "api.prod.example.ward"
	policy = `permit (principal == Workload::"spiffe://prod.example/ns/shop/web", action == Action::"connect", resource == Service::"api");`
)

func dur(d time.Duration) yamlconf.Duration { return yamlconf.Duration(d) }

// echoApp is the app behind the inbound proxy: it reads the proxy's PROXY
// v2 header and echoes each line prefixed with the caller's SPIFFE ID and
// source address.
func echoApp(t testing.TB) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				h, err := proxyproto.ReadV2(r)
				if err != nil {
					fmt.Fprintf(c, "bad proxy header: %v\n", err)
					return
				}
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s %s", h.SPIFFEID(), h.Src, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l
}

// tap is a TCP relay between the gateway and the inbound proxy that
// records every byte each way and counts connections: what the gateway
// forwarded.
type tap struct {
	l        net.Listener
	accepted atomic.Int64
	done     atomic.Int64 // connections whose both directions ended
	mu       sync.Mutex
	up, down []*syncbufBytes // per connection: gateway -> proxy, proxy -> gateway
}

// recorded returns copies of connection i's bytes each way.
func (tp *tap) recorded(i int) (up, down []byte) {
	tp.mu.Lock()
	u, d := tp.up[i], tp.down[i]
	tp.mu.Unlock()
	return u.bytes(), d.bytes()
}

func newTap(t testing.TB, target func() string) *tap {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	tp := &tap{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tp.accepted.Add(1)
			up, down := &syncbufBytes{}, &syncbufBytes{}
			tp.mu.Lock()
			tp.up, tp.down = append(tp.up, up), append(tp.down, down)
			tp.mu.Unlock()
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target())
				if err != nil {
					tp.done.Add(1)
					return
				}
				defer s.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(io.MultiWriter(s, up), c); s.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(io.MultiWriter(c, down), s); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				<-done
				<-done
				tp.done.Add(1)
			}()
		}
	}()
	return tp
}

// syncbufBytes is a bytes.Buffer written by one goroutine and read after
// the connection ended (the tests wait for that).
type syncbufBytes struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncbufBytes) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncbufBytes) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// env: an authority with the api (server) and web (client) workloads, an
// echo app behind an inbound proxy (accept_proxy_v2, per-source limits of
// 1 that must not apply to it), a gateway whose one
// route "api" goes through a tap to that proxy, and the web workload's
// outbound proxy whose listener goes through the gateway.
type env struct {
	t          testing.TB
	dir        string
	api, web   *proxytest.Workload
	inbound    *proxy.Proxy
	inboundLog *syncbuf.Buffer
	tap        *tap
	gw         *gateway.Gateway
	gwCfg      *gateway.Config
	gwLog      *syncbuf.Buffer
	gwStop     context.CancelFunc
	gwDone     chan error
	outbound   *proxy.Proxy
}

func newEnv(t testing.TB, mutate func(*gateway.Config)) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "wg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir}
	auth, err := proxytest.NewAuthority(ctx, dir, tdName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	if e.api, err = auth.AddWorkload(ctx, "/ns/shop/api", 0); err != nil {
		t.Fatal(err)
	}
	if e.web, err = auth.AddWorkload(ctx, "/ns/shop/web", 0); err != nil {
		t.Fatal(err)
	}
	pdir := filepath.Join(dir, "policy")
	os.Mkdir(pdir, 0o700)
	if err := os.WriteFile(filepath.Join(pdir, "p.cedar"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	app := echoApp(t)
	e.inboundLog = &syncbuf.Buffer{}
	e.inbound = startProxy(t, ctx, &proxy.Config{
		WorkloadAPISocket: e.api.Addr,
		PolicyFiles:       []string{pdir},
		// Small per-source limits: an accept_proxy_v2 listener counts them
		// under the original source the gateway's PROXY header names, not
		// under the gateway's address (proxy's
		// TestGatewaySourcesCountPerSource); here every caller is
		// 127.0.0.1, and the tests have at most two connections open at once.
		MaxConnectionsPerSource: 2,
		MaxHandshakesPerSource:  2,
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: app.Addr().String(),
			PeerIdentity: proxy.PeerIdentityProxyV2, AcceptProxyV2: true, Service: proxy.Service{Name: "api", Port: 8443}}},
	}, proxy.WithAccessLog(e.inboundLog))
	e.tap = newTap(t, func() string { return e.inbound.Addr("api").String() })

	e.gwCfg = &gateway.Config{
		Listen:       "127.0.0.1:0",
		TrustDomain:  tdName,
		AdminAddress: "127.0.0.1:0",
		Routes:       []gateway.Route{{Service: "api", Forward: e.tap.l.Addr().String(), ProxyProtocol: gateway.ProxyProtocolV2}},
	}
	if mutate != nil {
		mutate(e.gwCfg)
	}
	e.gwLog = &syncbuf.Buffer{}
	gctx, stop := context.WithCancel(ctx)
	e.gwStop = stop
	e.gw, e.gwDone = startGateway(t, gctx, e.gwCfg, gateway.WithAccessLog(e.gwLog))

	e.outbound = startProxy(t, ctx, &proxy.Config{
		WorkloadAPISocket: e.web.Addr,
		Outbound: []proxy.Outbound{{Name: "to-api", Listen: "127.0.0.1:0", Remote: e.gw.Addr("listen").String(),
			ServerID: apiID, GatewayService: "api"}},
	}, proxy.WithAccessLog(io.Discard))
	return e
}

func startProxy(t testing.TB, ctx context.Context, cfg *proxy.Config, opts ...proxy.Option) *proxy.Proxy {
	t.Helper()
	p, err := proxy.New(cfg, append([]proxy.Option{proxy.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Started():
	case err := <-done:
		t.Fatalf("proxy stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("proxy did not start")
	}
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
	})
	return p
}

func startGateway(t testing.TB, ctx context.Context, cfg *gateway.Config, opts ...gateway.Option) (*gateway.Gateway, chan error) {
	t.Helper()
	g, err := gateway.New(cfg, append([]gateway.Option{gateway.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-g.Started():
	case err := <-done:
		t.Fatalf("gateway stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not start")
	}
	return g, done
}

// request sends msg through the outbound proxy and returns the echo.
func (e *env) request(msg string) (string, error) {
	c, err := net.Dial("tcp", e.outbound.Addr("to-api").String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// metric scrapes the gateway's /metrics and sums the samples of name
// whose labels contain every pair in match.
func metric(t testing.TB, g *gateway.Gateway, name string, match ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + g.Addr("admin").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if ok {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			sum += v
		}
	}
	return sum
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if err := proxytest.WaitFor(30*time.Second, cond); err != nil {
		t.Fatalf("%s: not reached within 30s", what)
	}
}

// checkTLSRecords parses b as a sequence of TLS records (after an
// optional PROXY v2 header) and fails on anything else.
func checkTLSRecords(t testing.TB, what string, b []byte, proxyHeader bool) (records int) {
	t.Helper()
	if proxyHeader {
		r := bufio.NewReader(bytes.NewReader(b))
		if _, err := proxyproto.ReadV2(r); err != nil {
			t.Fatalf("%s: PROXY v2 header: %v", what, err)
		}
		rest, _ := io.ReadAll(r)
		b = rest
	}
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%s: %d trailing bytes are no TLS record", what, len(b))
		}
		typ, n := b[0], int(binary.BigEndian.Uint16(b[3:]))
		if typ < 20 || typ > 23 || b[1] != 3 || n > 1<<14+256 || len(b) < 5+n {
			t.Fatalf("%s: record %d: type %d version %x length %d (%d bytes left): not a TLS record", what, records, typ, b[1:3], n, len(b))
		}
		if records == 0 && typ != 22 {
			t.Fatalf("%s: first record type %d, want a handshake (the ClientHello)", what, typ)
		}
		b = b[5+n:]
		records++
	}
	return records
}
