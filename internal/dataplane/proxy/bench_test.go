package proxy_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

// BenchmarkDecide is the per-connection policy work of an inbound
// listener: one connect decision against the proxy's engine.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{2, 10000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			src := basePolicy
			for i := 0; i < n-2; i++ {
				src += fmt.Sprintf("@id(\"p%d\") permit (principal == Workload::\"spiffe://prod.example/ns/n%d/w\", action == Action::\"connect\", resource == Service::\"s%d\");\n", i, i, i%50)
			}
			s, err := policy.Compile(map[string][]byte{"p.cedar": []byte(src)})
			if err != nil {
				b.Fatal(err)
			}
			e := policy.NewEngine()
			e.Store(s.WithVersion(1))
			req := policy.Request{Principal: webID, CertSerial: "1f2e3d", Action: policy.ActionConnect,
				Resource: policy.Resource{Type: policy.TypeService, Name: "api", Port: 8443, Classification: "internal"},
				Context:  policy.Context{TLSVersion: "1.3", Destination: "127.0.0.1:8443"}}
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if !e.Decide(req).Allowed {
					b.Fatal("denied")
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
		})
	}
}

// BenchmarkForward is the steady-state data path: 64 KiB writes through
// client proxy → mTLS → server proxy → a sink app, on one connection.
func BenchmarkForward(b *testing.B) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n [8]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(n[:])))
				c.Write([]byte{'K'})
			}()
		}
	}()
	e := newEnv(b, withConfig(func(c *proxy.Config) {
		c.Inbound[0].PeerIdentity = proxy.PeerIdentityNone
		c.Inbound[0].Forward = sink.Addr().String()
	}))
	c, _, err := dialVia(e.clientWeb)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(b.N)*uint64(len(buf)))
	if _, err := c.Write(n[:]); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := io.ReadFull(c, n[:1]); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkNewConnection is one request on a fresh connection: TCP to the
// client proxy, mTLS handshake (hybrid PQ key exchange, both chains
// verified), connect decision, PROXY header, app round trip; with TLS
// session resumption off (a full handshake with both certificate
// signatures every time) and on (a resumed handshake: no signatures, the
// chain still verified and the decision still made). The two take turns
// (-count interleaves runs of both).
func BenchmarkNewConnection(b *testing.B) {
	for _, resume := range []bool{false, true} {
		b.Run(fmt.Sprintf("resumption=%v", resume), func(b *testing.B) {
			e := newEnv(b, withConfig(func(c *proxy.Config) { c.TLS.SessionResumption = &resume }), withClientTLS(proxy.TLSConfig{SessionResumption: &resume}))
			b.ReportAllocs()
			b.ResetTimer()
			defer benchcpu.ReportPerOp(b, benchcpu.Process(b))
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", e.clientWeb.Addr("to-api").String())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.WriteString(c, "x\n"); err != nil {
					b.Fatal(err)
				}
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.StopTimer()
			if resume {
				if v := metric(b, e.server, "ward_proxy_tls_resumed_total"); b.N > 1 && v < float64(b.N-1)/2 {
					b.Fatalf("%v of %d connections resumed", v, b.N)
				}
			}
		})
	}
}

// BenchmarkRoundTrip is the per-request path on an open connection: one
// line written and its echo read back, directly to the app (direct),
// through a bare crypto/tls forwarder pair doing the same mTLS job with
// the same SVIDs (go-tls: both sides verify, TLS 1.3, Go's default groups),
// and through the ward proxy pair (ward). All in this process, one after
// the other; p50/p99 per request and CPU per request say what the pair
// adds to a request and what ward adds over bare TLS forwarding.
func BenchmarkRoundTrip(b *testing.B) {
	e := newEnv(b)
	plain := newEchoApp(b, false)
	bare := bareTLSPair(b, e, plain.l.Addr().String())
	for _, p := range []struct{ name, addr string }{
		{"direct", plain.l.Addr().String()},
		{"go-tls", bare},
		{"ward", e.clientWeb.Addr("to-api").String()},
	} {
		b.Run(p.name, func(b *testing.B) {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			if _, err := roundTrip(c, r, "warm"); err != nil {
				b.Fatal(err)
			}
			msg := []byte("0123456789abcdef0123456789abcdef\n")
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs() // the whole process: the client, both proxies (ward, go-tls) and the app
			b.ResetTimer()
			t0cpu := benchcpu.Process(b)
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := r.ReadSlice('\n'); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			benchcpu.ReportPerOp(b, t0cpu)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
			b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds())/1000, "p99.9-µs")
		})
	}
}

// bareTLSPair starts two minimal crypto/tls forwarders in this process
// (client side: plain in, mTLS out with web's SVID; server side: mTLS in
// with api's SVID, requiring and verifying a client certificate, plain out
// to app) and returns the client side's address.
func bareTLSPair(b *testing.B, e *env, app string) string {
	sCrt, sKey, bundle, err := e.api.WriteFiles(e.dir, "bare-server")
	if err != nil {
		b.Fatal(err)
	}
	cCrt, cKey, _, err := e.web.WriteFiles(e.dir, "bare-client")
	if err != nil {
		b.Fatal(err)
	}
	sCert, err := tls.LoadX509KeyPair(sCrt, sKey)
	if err != nil {
		b.Fatal(err)
	}
	cCert, err := tls.LoadX509KeyPair(cCrt, cKey)
	if err != nil {
		b.Fatal(err)
	}
	pemBytes, err := os.ReadFile(bundle)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	forward := func(l net.Listener, dial func() (net.Conn, error), wrap func(net.Conn) net.Conn) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				in := wrap(c)
				defer in.Close()
				out, err := dial()
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(out, in); done <- struct{}{} }()
				go func() { io.Copy(in, out); done <- struct{}{} }()
				<-done
			}()
		}
	}
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cli, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close(); cli.Close() })
	scfg := &tls.Config{Certificates: []tls.Certificate{sCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	ccfg := &tls.Config{Certificates: []tls.Certificate{cCert}, RootCAs: pool, ServerName: apiDNS, MinVersion: tls.VersionTLS13}
	go forward(srv, func() (net.Conn, error) { return net.Dial("tcp", app) }, func(c net.Conn) net.Conn { return tls.Server(c, scfg) })
	go forward(cli, func() (net.Conn, error) { return tls.Dial("tcp", srv.Addr().String(), ccfg) }, func(c net.Conn) net.Conn { return c })
	return cli.Addr().String()
}
