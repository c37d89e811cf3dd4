package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// benchSet builds n policies: ~95% exact principal+resource permits,
// ~4% forbids (exact principal, trust-domain or group scoped, with
// conditions), 20 group-scoped permits and 20 unscoped policies with
// conditions, over n/10 workloads and n/20 services.
func benchSet(tb testing.TB, n int) (*Set, []Request) {
	r := rand.New(rand.NewPCG(1, 2))
	nw, ns := n/10, n/20
	wl := func(i int) string { return fmt.Sprintf("spiffe://td%d.example/ns/app%d/w%d", i%5, i%50, i) }
	var b strings.Builder
	i := 0
	emit := func(format string, args ...any) {
		fmt.Fprintf(&b, "@id(\"p%d\")\n", i)
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\n")
		i++
	}
	for j := 0; j < 20; j++ {
		emit(`forbid (principal, action, resource) when { context.tls_version == "1.0" && resource.name like "legacy-%d*" };`, j)
		emit(`permit (principal in Group::"g%d", action == Action::"connect", resource == Service::"s%d");`, j, r.IntN(ns))
	}
	for j := 0; j < n/25; j++ {
		switch j % 3 {
		case 0:
			emit(`forbid (principal == Workload::%q, action, resource) when { context.unix_time > 1900000000 };`, wl(r.IntN(nw)))
		case 1:
			emit(`forbid (principal in TrustDomain::"td%d.example", action, resource == Service::"s%d") unless { context.tls_version == "1.3" };`, r.IntN(5), r.IntN(ns))
		case 2:
			emit(`@dryrun("true") forbid (principal == Workload::%q, action == Action::"connect", resource == Service::"s%d");`, wl(r.IntN(nw)), r.IntN(ns))
		}
	}
	for i < n {
		emit(`permit (principal == Workload::%q, action == Action::"connect", resource == Service::"s%d");`, wl(r.IntN(nw)), r.IntN(ns))
	}
	s, err := Compile(map[string][]byte{"bench.cedar": []byte(b.String())})
	if err != nil {
		tb.Fatal(err)
	}
	// Requests for existing permits and for random pairs.
	var reqs []Request
	for _, p := range s.all {
		if len(reqs) == 1000 {
			break
		}
		if p.pAny || p.rAny || p.forbid || p.pKey.Type != TypeWorkload {
			continue
		}
		reqs = append(reqs, Request{Principal: string(p.pKey.ID), Action: ActionConnect, Groups: []string{"g1"},
			Resource: Resource{Type: TypeService, Name: string(p.rKey.ID), Port: 443}, Context: Context{TLSVersion: "1.3", Time: t0}})
	}
	for k := 0; k < 1000; k++ {
		reqs = append(reqs, Request{Principal: wl(r.IntN(nw)), Action: ActionConnect, Labels: map[string]string{"team": "x"},
			Resource: Resource{Type: TypeService, Name: fmt.Sprintf("s%d", r.IntN(ns)), Port: 443}, Context: Context{TLSVersion: "1.3", Time: t0}})
	}
	return s, reqs
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	if len(lat) == 0 {
		return
	}
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkDecide10k compares the indexed Set with handing cedar-go all
// 10,000 policies, and reports p50/p99 latency per decision.
func BenchmarkDecide10k(b *testing.B) {
	s, reqs := benchSet(b, 10000)
	allowed := 0
	for _, q := range reqs {
		if s.Decide(q).Allowed {
			allowed++
		}
	}
	b.Logf("%d policies, %d requests, %d allowed", s.Len(), len(reqs), allowed)
	for _, mode := range []struct {
		name      string
		unindexed bool
	}{{"indexed", false}, {"unindexed", true}} {
		b.Run(mode.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, min(b.N, 1<<20))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				q := &reqs[i%len(reqs)]
				start := time.Now()
				s.decide(q, mode.unindexed)
				if len(lat) < cap(lat) {
					lat = append(lat, time.Since(start))
				}
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// BenchmarkEngineDecideParallel measures concurrent decisions through an
// Engine, as a busy proxy makes them.
func BenchmarkEngineDecideParallel(b *testing.B) {
	s, reqs := benchSet(b, 10000)
	e := NewEngine()
	e.Store(s)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			e.Decide(reqs[i%len(reqs)])
			i++
		}
	})
}

func BenchmarkCompile10k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchSet(b, 10000)
	}
}
