// Command proxybench compares, on loopback and in one run, four ways of
// carrying the same traffic: a direct TCP connection, a bare Go TLS pair
// (two minimal crypto/tls forwarders doing mTLS with static certificates), a
// ward proxy pair (two `ward proxy` processes, SVIDs from a real Workload
// API, policy decision per connection, access log), and an stunnel4 pair
// doing the same mTLS job; and the ward proxy pair through a ward gateway
// (ward-gw) or through HAProxy doing the same SNI routing (haproxy), see
// bench/gateway/run.sh. For each it measures single-stream throughput,
// requests/s (closed loop) and p50/p99 latency at a fixed rate, and new
// connections/s, then prints ratios. Run it through bench/proxy/run.sh.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/proxytest"
)

var (
	wardBin                                                     = flag.String("ward", "ward", "path to the ward binary")
	stunnel                                                     = flag.String("stunnel", "stunnel4", "path to stunnel (empty: skip)")
	haproxy                                                     = flag.String("haproxy", "haproxy", "path to haproxy for the haproxy path (empty: skip)")
	streamMB                                                    = flag.Int("stream-mb", 512, "MiB sent for single-stream throughput")
	rate                                                        = flag.Int("rate", 1000, "requests/s for the fixed-rate latency run")
	rateDur                                                     = flag.Duration("rate-duration", 5*time.Second, "length of the fixed-rate run")
	loopDur                                                     = flag.Duration("loop-duration", 3*time.Second, "length of the closed-loop runs")
	conns                                                       = flag.Int("conns", 8, "concurrent connections for the request and connection runs")
	msgSize                                                     = flag.Int("msg", 128, "request and response size in bytes")
	only                                                        = flag.String("only", "", "comma-separated subset of paths: direct,go-tls,ward,stunnel,ward-gw,haproxy (default: the first four)")
	bareMode                                                    = flag.String("bare", "", "internal: run a bare Go TLS forwarder (server|client)")
	bareListen, bareTarget, bareCert, bareKey, bareCA, bareName string
)

func init() {
	flag.StringVar(&bareListen, "bare-listen", "", "internal")
	flag.StringVar(&bareTarget, "bare-target", "", "internal")
	flag.StringVar(&bareCert, "bare-cert", "", "internal")
	flag.StringVar(&bareKey, "bare-key", "", "internal")
	flag.StringVar(&bareCA, "bare-ca", "", "internal")
	flag.StringVar(&bareName, "bare-name", "", "internal")
}

func main() {
	flag.Parse()
	if *bareMode != "" {
		if err := runBare(); err != nil {
			fmt.Fprintln(os.Stderr, "bare forwarder:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

// ---- the app: 'T' + 8-byte length = sink then 'K'; 'E' = echo fixed-size messages

func serveApp(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReaderSize(c, 64<<10)
			mode, err := r.ReadByte()
			if err != nil {
				return
			}
			switch mode {
			case 'T':
				var n [8]byte
				if _, err := io.ReadFull(r, n[:]); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint64(n[:]))); err != nil {
					return
				}
				c.Write([]byte{'K'})
			case 'E':
				buf := make([]byte, *msgSize)
				for {
					if _, err := io.ReadFull(r, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}
		}()
	}
}

// ---- bare Go TLS forwarders

func runBare() error {
	cert, err := tls.LoadX509KeyPair(bareCert, bareKey)
	if err != nil {
		return err
	}
	pem, err := os.ReadFile(bareCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	l, err := net.Listen("tcp", bareListen)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var in, out net.Conn = c, nil
			switch *bareMode {
			case "server":
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
					ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true})
				if err := tc.Handshake(); err != nil {
					return
				}
				in = tc
				out, err = net.Dial("tcp", bareTarget)
			case "client":
				out, err = tls.Dial("tcp", bareTarget, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool,
					ServerName: bareName, MinVersion: tls.VersionTLS13})
			}
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

// ---- processes

type procs struct {
	mu   sync.Mutex
	list []*exec.Cmd
}

func (p *procs) start(name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.mu.Lock()
	p.list = append(p.list, cmd)
	p.mu.Unlock()
	return cmd, nil
}

func (p *procs) stopAll() {
	for _, c := range p.list {
		c.Process.Kill()
		c.Wait()
	}
}

func freePort() string {
	ports, err := netutil.FreeLoopbackPorts(1)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}

// waitEcho waits until a request through addr gets its echo.
func waitEcho(addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := oneRequest(addr); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%s never answered: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func oneRequest(addr string) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1+*msgSize)
	buf[0] = 'E'
	if _, err := c.Write(buf); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, buf[:*msgSize]); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// ---- measurements

type result struct {
	name         string
	mbps         float64
	rps          float64
	p50, p99     time.Duration
	rateAchieved float64
	connsPerSec  float64
	errors       int64
}

func throughput(addr string) (float64, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	n := int64(*streamMB) << 20
	hdr := make([]byte, 9)
	hdr[0] = 'T'
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	buf := make([]byte, 256<<10)
	t0 := time.Now()
	if _, err := c.Write(hdr); err != nil {
		return 0, err
	}
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:k]); err != nil {
			return 0, err
		}
		sent += k
	}
	if _, err := io.ReadFull(c, hdr[:1]); err != nil || hdr[0] != 'K' {
		return 0, fmt.Errorf("no completion byte: %v", err)
	}
	return float64(n) / (1 << 20) / time.Since(t0).Seconds(), nil
}

type echoConn struct {
	c   net.Conn
	buf []byte
}

func dialEcho(addr string) (*echoConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{'E'}); err != nil {
		return nil, err
	}
	return &echoConn{c: c, buf: make([]byte, *msgSize)}, nil
}

func (e *echoConn) do() error {
	if _, err := e.c.Write(e.buf); err != nil {
		return err
	}
	_, err := io.ReadFull(e.c, e.buf)
	return err
}

// closedLoop: *conns persistent connections send requests back to back.
func closedLoop(addr string) (float64, int64, error) {
	var n, errs atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*loopDur)
	for i := 0; i < *conns; i++ {
		ec, err := dialEcho(addr)
		if err != nil {
			return 0, 0, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ec.c.Close()
			for time.Now().Before(deadline) {
				if err := ec.do(); err != nil {
					errs.Add(1)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / loopDur.Seconds(), errs.Load(), nil
}

// fixedRate sends *rate requests/s in total over *conns connections, each
// connection on its own evenly spaced schedule, and measures each request's
// round trip. Requests that start over 1 ms behind schedule are counted and
// reported: the generator must keep up for the figures to mean anything.
func fixedRate(addr string) (p50, p99 time.Duration, achieved float64, errs int64, err error) {
	ecs := make([]*echoConn, *conns)
	for i := range ecs {
		if ecs[i], err = dialEcho(addr); err != nil {
			return 0, 0, 0, 0, err
		}
		defer ecs[i].c.Close()
	}
	perConn := int(float64(*rate)*rateDur.Seconds()) / *conns
	interval := time.Duration(float64(time.Second) * float64(*conns) / float64(*rate))
	lat := make([][]time.Duration, *conns)
	var e, late atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i, ec := range ecs {
		wg.Add(1)
		go func(i int, ec *echoConn) {
			defer wg.Done()
			offset := interval * time.Duration(i) / time.Duration(*conns)
			for k := 0; k < perConn; k++ {
				at := start.Add(offset + time.Duration(k)*interval)
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				} else if -d > time.Millisecond {
					late.Add(1)
				}
				t0 := time.Now()
				if err := ec.do(); err != nil {
					e.Add(1)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}(i, ec)
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return 0, 0, 0, e.Load(), errors.New("no request succeeded")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if l := late.Load(); l > int64(len(all)/100) {
		fmt.Fprintf(os.Stderr, "warning: %d of %d requests started over 1 ms late; latency figures are optimistic\n", l, len(all))
	}
	return all[len(all)/2], all[len(all)*99/100], float64(len(all)) / el.Seconds(), e.Load(), nil
}

// newConns: *conns workers each open a connection, do one request, close.
func newConns(addr string) (float64, int64) {
	var n, errs atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*loopDur)
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := oneRequest(addr); err != nil {
					errs.Add(1)
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / loopDur.Seconds(), errs.Load()
}

func measure(name, addr string) (result, error) {
	r := result{name: name}
	if err := waitEcho(addr); err != nil {
		return r, err
	}
	var err error
	if r.mbps, err = throughput(addr); err != nil {
		return r, fmt.Errorf("%s throughput: %w", name, err)
	}
	var e1, e2, e3 int64
	if r.rps, e1, err = closedLoop(addr); err != nil {
		return r, fmt.Errorf("%s requests: %w", name, err)
	}
	if r.p50, r.p99, r.rateAchieved, e2, err = fixedRate(addr); err != nil {
		return r, fmt.Errorf("%s fixed rate: %w", name, err)
	}
	r.connsPerSec, e3 = newConns(addr)
	r.errors = e1 + e2 + e3
	return r, nil
}

// ---- setup

func run() error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ps procs
	defer ps.stopAll()

	auth, err := proxytest.NewAuthority(ctx, dir, "bench.example")
	if err != nil {
		return err
	}
	defer auth.Close()
	api, err := auth.AddWorkload(ctx, "/ns/bench/server", 0, "server.bench.example")
	if err != nil {
		return err
	}
	web, err := auth.AddWorkload(ctx, "/ns/bench/client", 0)
	if err != nil {
		return err
	}
	sCrt, sKey, bundle, err := api.WriteFiles(dir, "server")
	if err != nil {
		return err
	}
	cCrt, cKey, _, err := web.WriteFiles(dir, "client")
	if err != nil {
		return err
	}

	appL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveApp(appL)
	app := appL.Addr().String()

	// startWard runs a ward proxy pair (server in front of the app, client
	// dialing it) and returns the client's listener; with via, the client
	// dials what via returns (a gateway in front of the server proxy) with
	// gateway_service set.
	startWard := func(tag string, via func(srv string) (string, error)) (string, error) {
		srv, cli := freePort(), freePort()
		pol := filepath.Join(dir, "bench.cedar")
		os.WriteFile(pol, []byte(`@id("client-to-server") permit (principal == Workload::"spiffe://bench.example/ns/bench/client", action == Action::"connect", resource == Service::"server");`), 0o600)
		scfg := fmt.Sprintf("workload_api_socket: %s\npolicy_files: [%s]\naccess_log: %s\nmax_connections: 100000\ninbound:\n  - name: server\n    listen: %s\n    forward: %s\n",
			api.Addr, pol, filepath.Join(dir, tag+"-server-access.log"), srv, app)
		remote, extra := srv, ""
		if via != nil {
			var err error
			if remote, err = via(srv); err != nil {
				return "", err
			}
			extra = "    gateway_service: server\n"
		}
		ccfg := fmt.Sprintf("workload_api_socket: %s\naccess_log: %s\nmax_connections: 100000\noutbound:\n  - name: to-server\n    listen: %s\n    remote: %s\n    server_id: spiffe://bench.example/ns/bench/server\n%s",
			web.Addr, filepath.Join(dir, tag+"-client-access.log"), cli, remote, extra)
		for name, c := range map[string]string{tag + "-server.yaml": scfg, tag + "-client.yaml": ccfg} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o600); err != nil {
				return "", err
			}
			if _, err := ps.start(*wardBin, "proxy", "--log-level", "warn", "--config", filepath.Join(dir, name)); err != nil {
				return "", err
			}
		}
		return cli, nil
	}

	paths := map[string]func() (string, error){
		"direct": func() (string, error) { return app, nil },
		"go-tls": func() (string, error) {
			self, _ := os.Executable()
			srv, cli := freePort(), freePort()
			if _, err := ps.start(self, "-bare", "server", "-bare-listen", srv, "-bare-target", app, "-bare-cert", sCrt, "-bare-key", sKey, "-bare-ca", bundle); err != nil {
				return "", err
			}
			if _, err := ps.start(self, "-bare", "client", "-bare-listen", cli, "-bare-target", srv, "-bare-cert", cCrt, "-bare-key", cKey, "-bare-ca", bundle, "-bare-name", "server.bench.example"); err != nil {
				return "", err
			}
			return cli, nil
		},
		"ward": func() (string, error) { return startWard("ward", nil) },
		// Through a ward gateway (no key, routes by SNI): client proxy ->
		// gateway -> server proxy, the client's gateway_service sets the SNI.
		"ward-gw": func() (string, error) {
			return startWard("ward-gw", func(srv string) (string, error) {
				gw := freePort()
				cfg := fmt.Sprintf("listen: %s\ntrust_domain: bench.example\naccess_log: %s\nmax_connections: 100000\nmax_connections_per_source: 100000\nmax_pending_per_source: 1000\nroutes:\n  - service: server\n    forward: %s\n",
					gw, filepath.Join(dir, "gateway-access.log"), srv)
				path := filepath.Join(dir, "gateway.yaml")
				if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
					return "", err
				}
				_, err := ps.start(*wardBin, "gateway", "--log-level", "warn", "--config", path)
				return gw, err
			})
		},
		// The same SNI routing by HAProxy (mode tcp, req.ssl_sni).
		"haproxy": func() (string, error) {
			if *haproxy == "" {
				return "", errSkip
			}
			if _, err := exec.LookPath(*haproxy); err != nil {
				return "", errSkip
			}
			return startWard("haproxy", func(srv string) (string, error) {
				gw := freePort()
				// maxconn within the usual 20000-fd limit (HAProxy needs two per connection).
				cfg := fmt.Sprintf(`global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend gw
  bind %s
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend server if { req.ssl_sni -m str server.bench.example.ward }
backend server
  server s1 %s
`, gw, srv)
				path := filepath.Join(dir, "haproxy.cfg")
				if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
					return "", err
				}
				_, err := ps.start(*haproxy, "-db", "-f", path)
				return gw, err
			})
		},
		"stunnel": func() (string, error) {
			if *stunnel == "" {
				return "", errSkip
			}
			if _, err := exec.LookPath(*stunnel); err != nil {
				return "", errSkip
			}
			srv, cli := freePort(), freePort()
			common := "foreground = yes\npid =\ndebug = 3\nsyslog = no\nsessionResume = no\n"
			sconf := fmt.Sprintf("%s[server]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\noptions = NO_TICKET\n",
				common, srv, app, sCrt, sKey, bundle)
			cconf := fmt.Sprintf("%s[client]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
				common, cli, srv, cCrt, cKey, bundle)
			for name, c := range map[string]string{"stunnel-server.conf": sconf, "stunnel-client.conf": cconf} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o600); err != nil {
					return "", err
				}
				if _, err := ps.start(*stunnel, filepath.Join(dir, name)); err != nil {
					return "", err
				}
			}
			return cli, nil
		},
	}
	order := []string{"direct", "go-tls", "ward", "stunnel"}
	if *only != "" {
		order = strings.Split(*only, ",")
	}
	fmt.Printf("loopback, %d CPUs; stream %d MiB; closed loop %s x %d conns; fixed rate %d req/s for %s; %d-byte messages\n\n",
		numCPU(), *streamMB, *loopDur, *conns, *rate, *rateDur, *msgSize)
	fmt.Printf("%-8s %12s %12s %10s %10s %10s %12s %7s\n", "path", "stream MB/s", "req/s", "p50 µs", "p99 µs", "rate req/s", "new conn/s", "errors")
	res := map[string]result{}
	for _, name := range order {
		setup, ok := paths[name]
		if !ok {
			return fmt.Errorf("unknown path %q", name)
		}
		addr, err := setup()
		if errors.Is(err, errSkip) {
			fmt.Printf("%-8s skipped (not installed: apt-get install stunnel4 / haproxy)\n", name)
			continue
		}
		if err != nil {
			return err
		}
		r, err := measure(name, addr)
		if err != nil {
			return err
		}
		res[name] = r
		fmt.Printf("%-8s %12.0f %12.0f %10.0f %10.0f %10.0f %12.0f %7d\n", name, r.mbps, r.rps,
			us(r.p50), us(r.p99), r.rateAchieved, r.connsPerSec, r.errors)
	}
	fmt.Println()
	ratio := func(a, b string, f func(result) float64, what string) {
		ra, oka := res[a]
		rb, okb := res[b]
		if oka && okb && f(rb) > 0 {
			fmt.Printf("%-40s %6.2f\n", fmt.Sprintf("%s / %s %s", a, b, what), f(ra)/f(rb))
		}
	}
	mb := func(r result) float64 { return r.mbps }
	rps := func(r result) float64 { return r.rps }
	cps := func(r result) float64 { return r.connsPerSec }
	ratio("ward", "go-tls", mb, "throughput")
	ratio("ward", "stunnel", mb, "throughput")
	ratio("ward", "go-tls", rps, "req/s")
	ratio("ward", "stunnel", rps, "req/s")
	ratio("ward", "go-tls", cps, "new conn/s")
	ratio("ward", "stunnel", cps, "new conn/s")
	for _, what := range []struct {
		f    func(result) float64
		name string
	}{{mb, "throughput"}, {rps, "req/s"}, {cps, "new conn/s"}} {
		ratio("ward-gw", "ward", what.f, what.name)
		ratio("haproxy", "ward", what.f, what.name)
		ratio("ward-gw", "haproxy", what.f, what.name)
	}
	if w, ok := res["ward"]; ok {
		for _, n := range []string{"ward-gw", "haproxy"} {
			if r, ok := res[n]; ok {
				fmt.Printf("%-40s %6.0f µs (p50 %.0f µs)\n", n+" added p99 vs ward proxy->proxy", us(r.p99-w.p99), us(r.p50-w.p50))
			}
		}
	}
	if d, ok := res["direct"]; ok {
		for _, n := range []string{"go-tls", "ward", "stunnel"} {
			if r, ok := res[n]; ok {
				fmt.Printf("%-40s %6.0f µs\n", n+" added p99 latency at fixed rate", us(r.p99-d.p99))
			}
		}
	}
	return nil
}

var errSkip = errors.New("skip")

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\nprocessor") + 1
}
