package policy

import "testing"

// TestFastPathAllocs: an uncached decision on the fast path (fast.go)
// allocates at most 2 times (the reasons and dry-run slices it returns),
// with 2, 1,000 and 10,000 policies, and the fast path does decide them;
// so does a decision answered from the cache (Decide, asked twice).
func TestFastPathAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(testing.TB) (*Set, []Request)
	}{
		{"2 policies", twoPolicies},
		{"1000 policies", func(tb testing.TB) (*Set, []Request) { return benchSet(tb, 1000) }},
		{"10000 policies", func(tb testing.TB) (*Set, []Request) { return benchSet(tb, 10000) }},
	} {
		s, reqs := tc.mk(t)
		fast := 0
		for i := range reqs {
			q := reqs[i]
			if _, _, ok := s.fastEvaluate(&q); ok {
				fast++
			}
		}
		if fast < len(reqs)*9/10 {
			t.Errorf("%s: the fast path decided %d of %d requests", tc.name, fast, len(reqs))
		}
		worst := 0.0
		for i := range reqs {
			q := reqs[i]
			if a := testing.AllocsPerRun(5, func() { s.decide(&q, false) }); a > worst {
				worst = a
			}
		}
		if worst > 2 {
			t.Errorf("%s: an uncached decision allocates %.0f times, want <= 2", tc.name, worst)
		}
		worst = 0
		for i := range reqs {
			q := reqs[i]
			s.Decide(q)
			if a := testing.AllocsPerRun(5, func() { s.Decide(q) }); a > worst {
				worst = a
			}
		}
		if worst > 2 {
			t.Errorf("%s: a decision through Decide (cached when it can be) allocates %.0f times, want <= 2", tc.name, worst)
		}
	}
}
