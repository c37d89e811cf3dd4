package attest

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in   string
		ok   bool
		want Selector
	}{
		{"unix:uid:1000", true, Selector{"unix", "uid:1000"}},
		{"unix:uid:0", true, Selector{"unix", "uid:0"}},
		{"unix:gid:4294967295", true, Selector{"unix", "gid:4294967295"}},
		{"unix:supplementary_gid:27", true, Selector{"unix", "supplementary_gid:27"}},
		{"unix:path:/usr/bin/api", true, Selector{"unix", "path:/usr/bin/api"}},
		{"unix:sha256:" + hex64, true, Selector{"unix", "sha256:" + hex64}},
		{"k8s:ns:payments", true, Selector{"k8s", "ns:payments"}},
		{"", false, Selector{}},
		{"unix", false, Selector{}},
		{"unix:", false, Selector{}},
		{":uid:1", false, Selector{}},
		{"Unix:uid:1", false, Selector{}},
		{"unix:uid:", false, Selector{}},
		{"unix:uid:-1", false, Selector{}},
		{"unix:uid:+1", false, Selector{}},
		{"unix:uid:01", false, Selector{}},
		{"unix:uid:4294967296", false, Selector{}},
		{"unix:uid:abc", false, Selector{}},
		{"unix:path:relative/bin", false, Selector{}},
		{"unix:path:/usr/../bin", false, Selector{}},
		{"unix:path:/usr//bin", false, Selector{}},
		{"unix:path:/usr/bin/", false, Selector{}},
		{"unix:sha256:" + strings.ToUpper(hex64), false, Selector{}},
		{"unix:sha256:abc", false, Selector{}},
		{"unix:user:root", false, Selector{}},
		{"k8s:ns:a\nb", false, Selector{}},
		{"k8s:ns:\xff", false, Selector{}},
		{strings.Repeat("a", 65) + ":x", false, Selector{}},
		{"unix:path:/" + strings.Repeat("a", 5000), false, Selector{}},
	} {
		got, err := ParseSelector(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("ParseSelector(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, ErrInvalidSelector) {
				t.Errorf("ParseSelector(%q) error does not wrap ErrInvalidSelector", tc.in)
			}
			continue
		}
		if got != tc.want || got.String() != tc.in {
			t.Errorf("ParseSelector(%q) = %+v (%s)", tc.in, got, got)
		}
	}
}

func TestParseSelectorsNormalizes(t *testing.T) {
	got, err := ParseSelectors([]string{"unix:uid:2", "unix:gid:1", "unix:uid:2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Value != "gid:1" || got[1].Value != "uid:2" {
		t.Fatalf("got %v", got)
	}
	if _, err := ParseSelectors([]string{"unix:uid:1", "bad"}); err == nil {
		t.Fatal("bad selector accepted")
	}
}

func TestSubset(t *testing.T) {
	s := func(v ...string) []Selector {
		out, err := ParseSelectors(v)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	have := s("unix:uid:1000", "unix:gid:1000", "unix:path:/bin/api")
	for _, tc := range []struct {
		req  []Selector
		want bool
	}{
		{s("unix:uid:1000"), true},
		{s("unix:uid:1000", "unix:path:/bin/api"), true},
		{s("unix:uid:1000", "unix:path:/bin/other"), false},
		{s("unix:uid:1001"), false},
		{nil, false},
	} {
		if got := Subset(tc.req, have); got != tc.want {
			t.Errorf("Subset(%v) = %v", tc.req, got)
		}
	}
}

type static []Selector

func (s static) Attest(context.Context, Caller) ([]Selector, error) { return s, nil }

type failing struct{}

func (failing) Attest(context.Context, Caller) ([]Selector, error) { return nil, errors.New("boom") }

func TestMulti(t *testing.T) {
	a := static{{"unix", "uid:1"}, {"unix", "gid:2"}}
	b := static{{"k8s", "ns:x"}, {"unix", "uid:1"}}
	got, err := Multi{a, b}.Attest(context.Background(), Caller{PID: 1})
	if err != nil || len(got) != 3 || got[0].Type != "k8s" {
		t.Fatalf("Multi = %v, %v", got, err)
	}
	if _, err := (Multi{a, failing{}}).Attest(context.Background(), Caller{}); err == nil {
		t.Fatal("Multi ignored a failing attestor")
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "unix:path:/a/b", "unix:sha256:" + strings.Repeat("0", 64), "k8s:ns:x", "a:b:c", ":", "unix:uid:01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		if sel.String() != s {
			t.Fatalf("String() = %q, input %q", sel.String(), s)
		}
		again, err := ParseSelector(sel.String())
		if err != nil || again != sel {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
		if strings.ContainsAny(sel.Value, "\x00\n\r") {
			t.Fatalf("control character accepted in %q", s)
		}
	})
}
