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

// measureDecide runs b.N decisions by decide over reqs and reports p50/p99
// latency per decision.
func measureDecide(b *testing.B, reqs []Request, decide func(*Request)) {
	lat := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q := &reqs[i%len(reqs)]
		start := time.Now()
		decide(q)
		if len(lat) < cap(lat) {
			lat = append(lat, time.Since(start))
		}
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkDecide10k compares the indexed Set with handing cedar-go all
// 10,000 policies, both without the decision cache, and reports p50/p99
// latency per decision.
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
			measureDecide(b, reqs, func(q *Request) { s.decide(q, mode.unindexed) })
		})
	}
}

// twoPolicies is the smallest realistic set: one permit, one forbid read
// from the context.
func twoPolicies(tb testing.TB) (*Set, []Request) {
	s, err := Compile(map[string][]byte{"p.cedar": []byte(`
permit (principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"s1");
forbid (principal, action, resource) when { context.tls_version == "1.0" };`)})
	if err != nil {
		tb.Fatal(err)
	}
	var reqs []Request
	for i := range 16 {
		reqs = append(reqs, Request{Principal: fmt.Sprintf("spiffe://%s/w%d", []string{"a.example", "b.example"}[i%2], i), Action: ActionConnect,
			Resource: Resource{Type: TypeService, Name: "s1", Port: 443}, Context: Context{TLSVersion: "1.3", Time: t0}})
	}
	return s, reqs
}

// BenchmarkDecide measures Decide as enforcement points call it, with 2
// and 10,000 policies: "cached" asks questions whose decision cannot
// depend on the time (answered from the Set's cache after the first time),
// "uncached" the same without the cache, and "mixed" the whole request mix
// of the 10,000-policy set, ~13% of which meet a policy reading the time
// and so are always evaluated.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{2, 10000} {
		var s *Set
		var reqs []Request
		if n == 2 {
			s, reqs = twoPolicies(b)
		} else {
			s, reqs = benchSet(b, n)
		}
		var timeless []Request
		for _, q := range reqs {
			if _, ok := s.evaluate(&q, false); ok {
				timeless = append(timeless, q)
			}
		}
		b.Run(fmt.Sprintf("policies=%d/cached", n), func(b *testing.B) {
			measureDecide(b, timeless, func(q *Request) { s.Decide(*q) })
		})
		b.Run(fmt.Sprintf("policies=%d/uncached", n), func(b *testing.B) {
			measureDecide(b, timeless, func(q *Request) { s.decide(q, false) })
		})
		if n > 2 {
			b.Run(fmt.Sprintf("policies=%d/mixed", n), func(b *testing.B) {
				measureDecide(b, reqs, func(q *Request) { s.Decide(*q) })
			})
		}
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
