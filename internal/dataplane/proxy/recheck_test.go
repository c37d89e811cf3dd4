package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

// sweepProxy is a proxy with n open, authorized inbound connections to
// service "api" from `principals` distinct workloads (each with its own
// certificate serial), under a set of total policies.
// The set permits a principal either by its own policy (perWorkload) or
// by its trust domain; revoke workloads of every 100 get a forbid in the
// returned second set (1% of the connections to close).
func sweepProxy(tb testing.TB, n, principals, total int, perWorkload bool) (p *Proxy, before, after *policy.Set) {
	wl := func(i int) string { return fmt.Sprintf("spiffe://prod.example/ns/n%d/w%d", i%97, i) }
	var b strings.Builder
	id := 0
	emit := func(format string, args ...any) {
		fmt.Fprintf(&b, "@id(\"p%d\") ", id)
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\n")
		id++
	}
	for j := range 20 {
		emit(`forbid (principal, action, resource) when { context.tls_version == "1.0" && resource.name like "legacy-%d*" };`, j)
	}
	if perWorkload {
		for i := range principals {
			emit(`permit (principal == Workload::%q, action == Action::"connect", resource == Service::"api");`, wl(i))
		}
	} else {
		emit(`permit (principal in TrustDomain::"prod.example", action == Action::"connect", resource == Service::"api");`)
	}
	for id < total {
		emit(`permit (principal == Workload::%q, action == Action::"connect", resource == Service::"s%d");`, wl(id), id%500)
	}
	compile := func(src string, v uint64) *policy.Set {
		s, err := policy.Compile(map[string][]byte{"p.cedar": []byte(src)})
		if err != nil {
			tb.Fatal(err)
		}
		return s.WithVersion(v)
	}
	before = compile(b.String(), 1)
	for i := 0; i < principals; i += 100 {
		emit(`forbid (principal == Workload::%q, action, resource);`, wl(i))
	}
	after = compile(b.String(), 2)

	p = &Proxy{engine: policy.NewEngine(), conns: map[*connState]struct{}{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.m = newMetrics(func() float64 { return 0 }, &p.chainHits, &p.chainMisses)
	p.engine.Store(before)
	for i := range n {
		c := &connState{listener: "api", inbound: true, req: policy.Request{
			Principal: wl(i % principals), CertSerial: fmt.Sprintf("%x", 0x10000000+i), ChainKeyIDs: []string{"a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"},
			Action:   policy.ActionConnect,
			Resource: policy.Resource{Type: policy.TypeService, Name: "api", Port: 8443, Classification: "internal"},
			Context:  policy.Context{SourceTrustDomain: "prod.example", TLSVersion: "1.3", Destination: "127.0.0.1:8443"},
		}}
		c.authorized.Store(true)
		p.conns[c] = struct{}{}
	}
	return p, before, after
}

// BenchmarkRecheck measures the sweep a new policy version starts: every
// open inbound connection (100,000) decided again against the new Set,
// 1% of them closed. "distinct" has a workload per connection (every
// decision a cache miss), "shared" 1,000 workloads over the connections.
// One op is one sweep; ns/conn is its wall time per connection,
// cpu-ns/conn the CPU time the process spent per connection.
func BenchmarkRecheck(b *testing.B) {
	const n = 100000
	for _, tc := range []struct {
		name        string
		principals  int
		perWorkload bool
	}{{"distinct", n, false}, {"shared", 1000, true}} {
		b.Run(tc.name, func(b *testing.B) {
			p, before, after := sweepProxy(b, n, tc.principals, 10000, tc.perWorkload)
			b.ReportAllocs()
			b.ResetTimer()
			var total, cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				// A fresh Set each time: its decision cache starts empty, as a
				// new version's does.
				next := after.WithVersion(uint64(2 + 2*i))
				p.engine.Store(before.WithVersion(uint64(1 + 2*i)))
				for c := range p.conns {
					c.revoked.Store(nil)
				}
				b.StartTimer()
				t0, c0 := time.Now(), benchcpu.Process(b)
				p.engine.Store(next)
				p.recheck()
				total += time.Since(t0)
				cpu += benchcpu.Process(b) - c0
			}
			b.StopTimer()
			closed := 0
			for c := range p.conns {
				if c.revoked.Load() != nil {
					closed++
				}
			}
			if closed != n/100 {
				b.Fatalf("the sweep closed %d connections, want %d", closed, n/100)
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/n, "ns/conn")
			b.ReportMetric(float64(total.Nanoseconds())/1e6/float64(b.N), "ms/sweep")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/n, "cpu-ns/conn")
		})
	}
}

// TestRecheckClosesCachedAllow runs the attack on the decision cache: a
// peer whose allow is cached (its connections decided, and decided again
// on a re-labelled version) must lose its open connections as soon as a
// version adding a forbid for it is applied; nobody else loses theirs.
func TestRecheckClosesCachedAllow(t *testing.T) {
	const n, principals = 500, 250
	p, before, after := sweepProxy(t, n, principals, 400, true)
	for range 2 {
		for c := range p.conns {
			if d := p.engine.Decide(c.req); !d.Allowed {
				t.Fatalf("%s denied under version 1: %+v", c.req.Principal, d)
			}
		}
	}
	p.applyPolicy(before.WithVersion(2)) // the same policies: everything stays open
	for c := range p.conns {
		if d := p.engine.Decide(c.req); !d.Allowed || d.Version != 2 || c.revoked.Load() != nil {
			t.Fatalf("%s under version 2: %+v (a decision cached by version 1?)", c.req.Principal, d)
		}
	}
	p.applyPolicy(after.WithVersion(3))
	closed := 0
	for c := range p.conns {
		d := c.revoked.Load()
		forbidden := strings.HasSuffix(c.req.Principal, "/w0") || strings.HasSuffix(c.req.Principal, "/w100") ||
			strings.HasSuffix(c.req.Principal, "/w200")
		if forbidden && (d == nil || d.Cause != policy.CauseForbid || d.Version != 3) {
			t.Fatalf("%s: open connection of a forbidden peer not closed by version 3 (revocation %+v)", c.req.Principal, d)
		}
		if !forbidden && d != nil {
			t.Fatalf("%s: connection closed by %+v", c.req.Principal, d)
		}
		if d != nil {
			closed++
		}
		if got := p.engine.Decide(c.req); got.Allowed == forbidden {
			t.Fatalf("%s: decided %+v after version 3", c.req.Principal, got)
		}
	}
	if closed != 3*n/principals {
		t.Fatalf("closed %d connections, want %d", closed, 3*n/principals)
	}
}
