// Command proxybench compares, on loopback and in one run, ways of carrying
// the same traffic: a direct TCP connection, a bare Go TLS pair (go-tls: two
// minimal crypto/tls forwarders doing mTLS with the same SVID files), a ward
// proxy pair (two `ward proxy` processes, SVIDs from a real Workload API,
// policy decision per connection, access log), an stunnel4 pair and an
// HAProxy pair (haproxy) doing the same mTLS job; and the ward proxy pair
// through a ward gateway (ward-gw) or through HAProxy doing the same SNI
// routing (haproxy-sni), see bench/gateway/run.sh. For each it measures
// single-stream throughput, requests/s (closed loop), p50/p99 latency at a
// fixed rate and new connections/s, and the CPU time the path's processes
// spent per request and per new connection (from /proc: on a shared machine
// it varies less than the rates). With -runs N every path is measured N
// times, the paths taking turns, and the table gives the medians. Run it
// through bench/proxy/run.sh.
//
// The same mTLS job: every pair terminates and originates TLS 1.3 with
// client certificates, both sides verify the peer's chain to the bundle
// (same P-256 SVIDs, same bundle), no session resumption (tickets off).
// What differs: ward and go-tls offer Go's default groups, whose first is
// the hybrid X25519MLKEM768; stunnel4 and HAProxy link Debian's OpenSSL 3.0,
// which has no ML-KEM, so their handshakes use X25519 alone. go-tls checks
// the server's DNS name, ward its SPIFFE ID; ward also decides policy, writes
// an access-log line per connection on both sides and sends its verdict
// frame (verdict.go).
package main

import (
	"bufio"
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wardproject/ward/internal/testutil/netutil"
	"github.com/wardproject/ward/internal/testutil/proxytest"
)

var (
	wardBin                                                     = flag.String("ward", "ward", "path to the ward binary")
	wardBase                                                    = flag.String("ward-base", "", "path to another ward binary (e.g. built from main) for the ward-base path: before/after in one run")
	stunnel                                                     = flag.String("stunnel", "stunnel4", "path to stunnel (empty: skip)")
	haproxy                                                     = flag.String("haproxy", "haproxy", "path to haproxy for the haproxy path (empty: skip)")
	streamMB                                                    = flag.Int("stream-mb", 512, "MiB sent for single-stream throughput")
	rate                                                        = flag.Int("rate", 1000, "requests/s for the fixed-rate latency run")
	rateDur                                                     = flag.Duration("rate-duration", 5*time.Second, "length of the fixed-rate run")
	loopDur                                                     = flag.Duration("loop-duration", 3*time.Second, "length of the closed-loop runs")
	conns                                                       = flag.Int("conns", 8, "concurrent connections for the request and connection runs")
	msgSize                                                     = flag.Int("msg", 128, "request and response size in bytes")
	only                                                        = flag.String("only", "", "comma-separated subset of paths: direct,go-tls,ward,stunnel,haproxy,ward-base,ward-gw,haproxy-sni,ward-resume,haproxy-resume (default: the first four; ward does not resume TLS sessions, like the haproxy and stunnel pairs; ward-resume and haproxy-resume do)")
	runs                                                        = flag.Int("runs", 1, "measure every path this many times, taking turns, and report the medians")
	profileDir                                                  = flag.String("profile", "", "write CPU profiles of the ward proxies (ward path) to this directory")
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

// stopGently ends cmds with SIGTERM (a ward proxy then writes its
// -cpu-profile) and waits for them.
func (p *procs) stopGently(cmds []*exec.Cmd) {
	for _, c := range cmds {
		c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range cmds {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
}

// cpuTime is the CPU time (user + system, all threads) cmds' processes
// have used so far, from /proc/PID/stat (clock ticks of 10 ms).
func cpuTime(cmds []*exec.Cmd) time.Duration {
	var total time.Duration
	for _, c := range cmds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		// After "pid (comm)": state is field 0, utime 11, stime 12.
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+st) * 10 * time.Millisecond
	}
	return total
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
	// CPU time of the path's processes (proxies; not the client or the
	// app) per request of the closed loop and per new connection; 0 when
	// the path has none (direct).
	cpuReq, cpuConn time.Duration
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
// It returns requests/s, errors and the number of requests.
func closedLoop(addr string) (float64, int64, int64, error) {
	var n, errs atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*loopDur)
	for i := 0; i < *conns; i++ {
		ec, err := dialEcho(addr)
		if err != nil {
			return 0, 0, 0, err
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
	return float64(n.Load()) / loopDur.Seconds(), errs.Load(), n.Load(), nil
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
				waitSlot(start.Add(offset+time.Duration(k)*interval), &late)
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
// It returns connections/s, errors and the number of connections.
func newConns(addr string) (float64, int64, int64) {
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
	return float64(n.Load()) / loopDur.Seconds(), errs.Load(), n.Load()
}

// measure runs every measurement through addr; cmds are the path's
// processes, whose CPU time is charged per request and per connection.
func measure(name, addr string, cmds []*exec.Cmd) (result, error) {
	r := result{name: name}
	if err := waitEcho(addr); err != nil {
		return r, err
	}
	var err error
	if r.mbps, err = throughput(addr); err != nil {
		return r, fmt.Errorf("%s throughput: %w", name, err)
	}
	var e1, e2, e3, n int64
	c0 := cpuTime(cmds)
	if r.rps, e1, n, err = closedLoop(addr); err != nil {
		return r, fmt.Errorf("%s requests: %w", name, err)
	}
	if n > 0 {
		r.cpuReq = (cpuTime(cmds) - c0) / time.Duration(n)
	}
	if *latRounds == 0 { // else the latency phase measures it (latency.go)
		if r.p50, r.p99, r.rateAchieved, e2, err = fixedRate(addr); err != nil {
			return r, fmt.Errorf("%s fixed rate: %w", name, err)
		}
	}
	c0 = cpuTime(cmds)
	r.connsPerSec, e3, n = newConns(addr)
	if n > 0 {
		r.cpuConn = (cpuTime(cmds) - c0) / time.Duration(n)
	}
	r.errors = e1 + e2 + e3
	return r, nil
}

// median is the result whose every figure is the median of rs's.
func median(rs []result) result {
	f := func(get func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	d := func(get func(result) time.Duration) time.Duration {
		return time.Duration(f(func(r result) float64 { return float64(get(r)) }))
	}
	m := result{name: rs[0].name}
	m.mbps = f(func(r result) float64 { return r.mbps })
	m.rps = f(func(r result) float64 { return r.rps })
	m.p50 = d(func(r result) time.Duration { return r.p50 })
	m.p99 = d(func(r result) time.Duration { return r.p99 })
	m.rateAchieved = f(func(r result) float64 { return r.rateAchieved })
	m.connsPerSec = f(func(r result) float64 { return r.connsPerSec })
	m.cpuReq = d(func(r result) time.Duration { return r.cpuReq })
	m.cpuConn = d(func(r result) time.Duration { return r.cpuConn })
	for _, r := range rs {
		m.errors += r.errors
	}
	return m
}

func printRow(name string, r result) {
	cpu := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", us(d))
	}
	lat := func(d time.Duration) string { // "-": measured by the latency phase instead
		if r.rateAchieved == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", us(d))
	}
	fmt.Printf("%-14s %12.0f %12.0f %10s %10s %10.0f %12.0f %7d %11s %12s\n", name, r.mbps, r.rps,
		lat(r.p50), lat(r.p99), r.rateAchieved, r.connsPerSec, r.errors, cpu(r.cpuReq), cpu(r.cpuConn))
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
	// dialing it) and returns the client's listener and the processes; with
	// via, the client dials what via returns (a gateway in front of the
	// server proxy) with gateway_service set.
	startWard := func(tag string, via func(srv string) (string, []*exec.Cmd, error)) (string, []*exec.Cmd, error) {
		bin := *wardBin
		tlsCfg := "tls:\n  session_resumption: false\n" // like for like: the peers' pairs do not resume
		switch tag {
		case "ward-base":
			bin, tlsCfg = *wardBase, "" // may predate the setting (and resumption)
		case "ward-resume":
			tlsCfg = "tls:\n  session_resumption: true\n"
		}
		srv, cli := freePort(), freePort()
		pol := filepath.Join(dir, "bench.cedar")
		os.WriteFile(pol, []byte(`@id("client-to-server") permit (principal == Workload::"spiffe://bench.example/ns/bench/client", action == Action::"connect", resource == Service::"server");`), 0o600)
		scfg := fmt.Sprintf("workload_api_socket: %s\npolicy_files: [%s]\naccess_log: %s\nmax_connections: 100000\n%sinbound:\n  - name: server\n    listen: %s\n    forward: %s\n",
			api.Addr, pol, filepath.Join(dir, tag+"-server-access.log"), tlsCfg, srv, app)
		remote, extra := srv, ""
		var cmds []*exec.Cmd
		if via != nil {
			var err error
			if remote, cmds, err = via(srv); err != nil {
				return "", nil, err
			}
			extra = "    gateway_service: server\n"
		}
		ccfg := fmt.Sprintf("workload_api_socket: %s\naccess_log: %s\nmax_connections: 100000\n%soutbound:\n  - name: to-server\n    listen: %s\n    remote: %s\n    server_id: spiffe://bench.example/ns/bench/server\n%s",
			web.Addr, filepath.Join(dir, tag+"-client-access.log"), tlsCfg, cli, remote, extra)
		for _, side := range []struct{ name, cfg string }{{"server", scfg}, {"client", ccfg}} {
			path := filepath.Join(dir, tag+"-"+side.name+".yaml")
			if err := os.WriteFile(path, []byte(side.cfg), 0o600); err != nil {
				return "", nil, err
			}
			args := []string{"proxy", "--log-level", "warn", "--config", path}
			if *profileDir != "" && tag == "ward" {
				args = append(args, "--cpu-profile", filepath.Join(*profileDir, "ward-"+side.name+".pprof"))
			}
			cmd, err := ps.start(bin, args...)
			if err != nil {
				return "", nil, err
			}
			cmds = append(cmds, cmd)
		}
		return cli, cmds, nil
	}

	// pemPair writes cert and key into one PEM file (HAProxy's crt).
	pemPair := func(name, crt, key string) (string, error) {
		c, err := os.ReadFile(crt)
		if err != nil {
			return "", err
		}
		k, err := os.ReadFile(key)
		if err != nil {
			return "", err
		}
		path := filepath.Join(dir, name+".pem")
		return path, os.WriteFile(path, append(c, k...), 0o600)
	}
	haproxyOK := func() bool {
		if *haproxy == "" {
			return false
		}
		_, err := exec.LookPath(*haproxy)
		return err == nil
	}

	// An HAProxy pair doing the proxy pair's mTLS job: the server side
	// terminates TLS 1.3 and requires a client certificate chaining to the
	// bundle, the client side presents the client SVID and verifies the
	// server's chain and name; tickets and session reuse off, or (resume)
	// on as HAProxy's defaults have them.
	startHAProxy := func(resume bool) (string, []*exec.Cmd, error) {
		if !haproxyOK() {
			return "", nil, errSkip
		}
		spem, err := pemPair("haproxy-server", sCrt, sKey)
		if err != nil {
			return "", nil, err
		}
		cpem, err := pemPair("haproxy-client", cCrt, cKey)
		if err != nil {
			return "", nil, err
		}
		noTickets, noReuse := " no-tls-tickets", " no-ssl-reuse"
		if resume { // HAProxy's defaults: tickets on the server side, session reuse on the client side
			noTickets, noReuse = "", ""
		}
		name := "haproxy"
		if resume {
			name = "haproxy-resume"
		}
		srv, cli := freePort(), freePort()
		common := "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n"
		cfgs := map[string]string{
			"haproxy-server.cfg": common + fmt.Sprintf("frontend mtls\n  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3 %s\n  default_backend app\nbackend app\n  server app %s\n",
				srv, spem, bundle, noTickets, app),
			"haproxy-client.cfg": common + fmt.Sprintf("frontend plain\n  bind %s\n  default_backend mtls\nbackend mtls\n  server s1 %s ssl crt %s ca-file %s verify required verifyhost server.bench.example sni str(server.bench.example) ssl-min-ver TLSv1.3%s\n",
				cli, srv, cpem, bundle, noReuse),
		}
		var cmds []*exec.Cmd
		for _, side := range []string{"haproxy-server.cfg", "haproxy-client.cfg"} {
			path := filepath.Join(dir, name+"-"+side)
			if err := os.WriteFile(path, []byte(cfgs[side]), 0o600); err != nil {
				return "", nil, err
			}
			cmd, err := ps.start(*haproxy, "-db", "-f", path)
			if err != nil {
				return "", nil, err
			}
			cmds = append(cmds, cmd)
		}
		return cli, cmds, nil
	}

	paths := map[string]func() (string, []*exec.Cmd, error){
		"direct": func() (string, []*exec.Cmd, error) { return app, nil, nil },
		"go-tls": func() (string, []*exec.Cmd, error) {
			self, _ := os.Executable()
			srv, cli := freePort(), freePort()
			s, err := ps.start(self, "-bare", "server", "-bare-listen", srv, "-bare-target", app, "-bare-cert", sCrt, "-bare-key", sKey, "-bare-ca", bundle)
			if err != nil {
				return "", nil, err
			}
			c, err := ps.start(self, "-bare", "client", "-bare-listen", cli, "-bare-target", srv, "-bare-cert", cCrt, "-bare-key", cKey, "-bare-ca", bundle, "-bare-name", "server.bench.example")
			if err != nil {
				return "", nil, err
			}
			return cli, []*exec.Cmd{s, c}, nil
		},
		"ward": func() (string, []*exec.Cmd, error) { return startWard("ward", nil) },
		// The ward pair with TLS session resumption (on by default in
		// ward; the ward path above turns it off to match the peers).
		"ward-resume": func() (string, []*exec.Cmd, error) { return startWard("ward-resume", nil) },
		"ward-base": func() (string, []*exec.Cmd, error) {
			if *wardBase == "" {
				return "", nil, errSkip
			}
			return startWard("ward-base", nil)
		},
		// Through a ward gateway (no key, routes by SNI): client proxy ->
		// gateway -> server proxy, the client's gateway_service sets the SNI.
		"ward-gw": func() (string, []*exec.Cmd, error) {
			return startWard("ward-gw", func(srv string) (string, []*exec.Cmd, error) {
				gw := freePort()
				cfg := fmt.Sprintf("listen: %s\ntrust_domain: bench.example\naccess_log: %s\nmax_connections: 100000\nmax_connections_per_source: 100000\nmax_pending_per_source: 1000\nroutes:\n  - service: server\n    forward: %s\n",
					gw, filepath.Join(dir, "gateway-access.log"), srv)
				path := filepath.Join(dir, "gateway.yaml")
				if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
					return "", nil, err
				}
				cmd, err := ps.start(*wardBin, "gateway", "--log-level", "warn", "--config", path)
				return gw, []*exec.Cmd{cmd}, err
			})
		},
		// The ward pair through HAProxy doing the gateway's SNI routing
		// (mode tcp, req.ssl_sni).
		"haproxy-sni": func() (string, []*exec.Cmd, error) {
			if !haproxyOK() {
				return "", nil, errSkip
			}
			return startWard("haproxy-sni", func(srv string) (string, []*exec.Cmd, error) {
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
				path := filepath.Join(dir, "haproxy-sni.cfg")
				if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
					return "", nil, err
				}
				cmd, err := ps.start(*haproxy, "-db", "-f", path)
				return gw, []*exec.Cmd{cmd}, err
			})
		},
		"haproxy":        func() (string, []*exec.Cmd, error) { return startHAProxy(false) },
		"haproxy-resume": func() (string, []*exec.Cmd, error) { return startHAProxy(true) },
		"stunnel": func() (string, []*exec.Cmd, error) {
			if *stunnel == "" {
				return "", nil, errSkip
			}
			if _, err := exec.LookPath(*stunnel); err != nil {
				return "", nil, errSkip
			}
			srv, cli := freePort(), freePort()
			common := "foreground = yes\npid =\ndebug = 3\nsyslog = no\nsessionResume = no\n"
			sconf := fmt.Sprintf("%s[server]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\noptions = NO_TICKET\n",
				common, srv, app, sCrt, sKey, bundle)
			cconf := fmt.Sprintf("%s[client]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
				common, cli, srv, cCrt, cKey, bundle)
			var cmds []*exec.Cmd
			for _, c := range []struct{ name, conf string }{{"stunnel-server.conf", sconf}, {"stunnel-client.conf", cconf}} {
				if err := os.WriteFile(filepath.Join(dir, c.name), []byte(c.conf), 0o600); err != nil {
					return "", nil, err
				}
				cmd, err := ps.start(*stunnel, filepath.Join(dir, c.name))
				if err != nil {
					return "", nil, err
				}
				cmds = append(cmds, cmd)
			}
			return cli, cmds, nil
		},
	}
	order := []string{"direct", "go-tls", "ward", "stunnel"}
	if *only != "" {
		order = strings.Split(*only, ",")
	}
	fmt.Printf("loopback, %d CPUs; stream %d MiB; closed loop %s x %d conns; fixed rate %d req/s for %s; %d-byte messages; %d run(s), paths taking turns\n\n",
		numCPU(), *streamMB, *loopDur, *conns, *rate, *rateDur, *msgSize, *runs)
	header := func() {
		fmt.Printf("%-14s %12s %12s %10s %10s %10s %12s %7s %11s %12s\n", "path", "stream MB/s", "req/s", "p50 µs", "p99 µs", "rate req/s", "new conn/s", "errors", "cpu µs/req", "cpu µs/conn")
	}
	type setup struct {
		name string
		addr string
		cmds []*exec.Cmd
	}
	var ready []setup
	for _, name := range order {
		start, ok := paths[name]
		if !ok {
			return fmt.Errorf("unknown path %q", name)
		}
		addr, cmds, err := start()
		if errors.Is(err, errSkip) {
			fmt.Printf("%-14s skipped (not installed: apt-get install stunnel4 / haproxy)\n", name)
			continue
		}
		if err != nil {
			return err
		}
		ready = append(ready, setup{name, addr, cmds})
	}
	all := map[string][]result{}
	if *runs > 1 {
		header()
	}
	for run := 1; run <= max(*runs, 1); run++ {
		for _, p := range ready {
			r, err := measure(p.name, p.addr, p.cmds)
			if err != nil {
				return err
			}
			all[p.name] = append(all[p.name], r)
			if *runs > 1 {
				printRow(fmt.Sprintf("%s#%d", p.name, run), r)
			}
		}
	}
	if *latRounds > 0 {
		addrs, procs := map[string]string{}, map[string][]*exec.Cmd{}
		for _, p := range ready {
			addrs[p.name], procs[p.name] = p.addr, p.cmds
		}
		if err := latencyPhase(addrs, procs); err != nil {
			return err
		}
		fmt.Println()
	}
	if *runs > 1 {
		fmt.Printf("\nmedians of %d runs:\n", *runs)
	}
	header()
	res := map[string]result{}
	for _, p := range ready {
		res[p.name] = median(all[p.name])
		printRow(p.name, res[p.name])
	}
	if *profileDir != "" {
		for _, p := range ready {
			if p.name == "ward" {
				ps.stopGently(p.cmds)
				fmt.Printf("\nCPU profiles of the ward pair: %s/ward-{server,client}.pprof (go tool pprof -top BINARY FILE)\n", *profileDir)
			}
		}
	}
	fmt.Println()
	ratio := func(a, b string, f func(result) float64, what string) {
		ra, oka := res[a]
		rb, okb := res[b]
		if oka && okb && f(rb) > 0 && f(ra) > 0 {
			fmt.Printf("%-44s %6.2f\n", fmt.Sprintf("%s / %s %s", a, b, what), f(ra)/f(rb))
		}
	}
	mb := func(r result) float64 { return r.mbps }
	rps := func(r result) float64 { return r.rps }
	cps := func(r result) float64 { return r.connsPerSec }
	// CPU ratios read like the others: > 1 when ward spends less.
	cpuC := func(r result) float64 {
		if r.cpuConn == 0 {
			return 0
		}
		return 1 / float64(r.cpuConn)
	}
	cpuR := func(r result) float64 {
		if r.cpuReq == 0 {
			return 0
		}
		return 1 / float64(r.cpuReq)
	}
	for _, peer := range []string{"go-tls", "stunnel", "haproxy", "ward-base"} {
		ratio("ward", peer, mb, "throughput")
		ratio("ward", peer, rps, "req/s")
		ratio("ward", peer, cps, "new conn/s")
		ratio("ward", peer, cpuR, "CPU per request (peer/ward)")
		ratio("ward", peer, cpuC, "CPU per new conn (peer/ward)")
	}
	// Session resumption: ward resuming against ward not resuming, and
	// against the HAProxy pair resuming (tickets and session reuse on).
	for _, peer := range []string{"ward", "haproxy-resume", "go-tls"} {
		ratio("ward-resume", peer, cps, "new conn/s")
		ratio("ward-resume", peer, cpuC, "CPU per new conn (peer/ward)")
	}
	for _, what := range []struct {
		f    func(result) float64
		name string
	}{{mb, "throughput"}, {rps, "req/s"}, {cps, "new conn/s"}} {
		ratio("ward-gw", "ward", what.f, what.name)
		ratio("haproxy-sni", "ward", what.f, what.name)
		ratio("ward-gw", "haproxy-sni", what.f, what.name)
	}
	if w, ok := res["ward"]; ok && *latRounds == 0 {
		for _, n := range []string{"ward-gw", "haproxy-sni"} {
			if r, ok := res[n]; ok {
				fmt.Printf("%-44s %6.0f µs (p50 %.0f µs)\n", n+" added p99 vs ward proxy->proxy", us(r.p99-w.p99), us(r.p50-w.p50))
			}
		}
	}
	if d, ok := res["direct"]; ok && *latRounds == 0 {
		for _, n := range []string{"go-tls", "ward", "ward-base", "stunnel", "haproxy"} {
			if r, ok := res[n]; ok {
				fmt.Printf("%-44s %6.0f µs\n", n+" added p99 latency at fixed rate", us(r.p99-d.p99))
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
