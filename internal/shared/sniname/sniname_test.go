package sniname

import (
	"strings"
	"testing"
)

func TestFor(t *testing.T) {
	for _, tc := range []struct{ svc, td, want, err string }{
		{"api", "prod.example", "api.prod.example.ward", ""},
		{"pay-ments2", "b.example", "pay-ments2.b.example.ward", ""},
		{"x", "my_domain.example", "x.my_domain.example.ward", ""},
		{"", "prod.example", "", "empty label"},
		{"Api", "prod.example", "", `has 'A'`},
		{"a.b", "prod.example", "", `has '.'`},
		{"-a", "prod.example", "", "starts or ends"},
		{"a_b", "prod.example", "", `has '_'`},
		{strings.Repeat("a", 64), "td", "", "longer than 63"},
		{"api", "", "", "no trust domain"},
		{"api", "prod..example", "", "empty label"},
		{"api", "Prod.example", "", `has 'P'`},
		{"api", strings.Repeat("abcdefghi.", 25) + "x", "", "more than 253"},
	} {
		got, err := For(tc.svc, tc.td)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("For(%q, %q) = %q, %v; want error %q", tc.svc, tc.td, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("For(%q, %q) = %q, %v; want %q", tc.svc, tc.td, got, err, tc.want)
		}
		s, td, ok := Parse(got)
		if !ok || s != tc.svc || td != tc.td {
			t.Errorf("Parse(%q) = %q, %q, %v", got, s, td, ok)
		}
	}
	for _, n := range []string{"api.prod.example", "api.ward", "ward", "API.prod.example.ward", ".prod.example.ward", "api.prod.example.ward."} {
		if s, td, ok := Parse(n); ok {
			t.Errorf("Parse(%q) = %q, %q, true; want false", n, s, td)
		}
	}
}
