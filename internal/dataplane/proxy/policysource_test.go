package proxy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/policy"
)

const permitAll = `@id("all") permit (principal, action, resource);`

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	pdir := filepath.Join(dir, "p")
	os.Mkdir(pdir, 0o700)
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(pdir, "a.cedar"), permitAll)
	write(filepath.Join(pdir, "ignored.txt"), "not cedar")
	deny := filepath.Join(dir, "deny.json")
	write(deny, `{"spiffe_ids": ["spiffe://td/bad"]}`)

	fs := NewFileSource([]string{pdir}, deny, time.Hour) // only Reload triggers
	var mu sync.Mutex
	var sets []*policy.Set
	var errs []error
	fs.OnError = func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- fs.Run(ctx, func(s *policy.Set) { mu.Lock(); sets = append(sets, s); mu.Unlock() })
	}()
	state := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(sets), len(errs) }
	wait := func(what string, cond func(n, e int) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond(state()) {
			if time.Now().After(deadline) {
				n, e := state()
				t.Fatalf("%s: sets=%d errors=%d", what, n, e)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("initial load", func(n, _ int) bool { return n == 1 })
	if sets[0].Version() != 1 || sets[0].Len() != 1 || len(sets[0].DenyList().SPIFFEIDs) != 1 {
		t.Fatalf("first set: version %d, %d policies, deny %v", sets[0].Version(), sets[0].Len(), sets[0].DenyList())
	}
	// unchanged content: no new version
	fs.Reload()
	time.Sleep(50 * time.Millisecond)
	if n, _ := state(); n != 1 {
		t.Fatalf("reload without change delivered %d sets", n)
	}
	// broken file: error, nothing delivered
	write(filepath.Join(pdir, "b.cedar"), `permit (principal, action`)
	fs.Reload()
	wait("error reported", func(_, e int) bool { return e == 1 })
	if !strings.Contains(errs[0].Error(), "b.cedar") {
		t.Fatalf("error does not name the file: %v", errs[0])
	}
	// fixed: version 2
	write(filepath.Join(pdir, "b.cedar"), `@id("b") forbid (principal, action, resource) when { false };`)
	fs.Reload()
	wait("second set", func(n, _ int) bool { return n == 2 })
	if sets[1].Version() != 2 || sets[1].Len() != 2 {
		t.Fatalf("second set: version %d, %d policies", sets[1].Version(), sets[1].Len())
	}
	// a bad deny-list is an error too
	write(deny, `{"spiffe_ids": ["not-an-id"]}`)
	fs.Reload()
	wait("deny-list error", func(_, e int) bool { return e == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestParseDenyList(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"spiffe_ids": ["spiffe://a/b"], "serials": ["0a"]}`, ""},
		{`{"ids": []}`, "unknown field"},
		{`{} {}`, "trailing data"},
		{`[`, "decode deny-list"},
	} {
		_, err := ParseDenyList([]byte(tc.in))
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseDenyList(f *testing.F) {
	f.Add([]byte(`{"spiffe_ids": ["spiffe://a/b"], "serials": ["0a"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dl, err := ParseDenyList(b)
		if err != nil {
			return
		}
		s, err := policy.Compile(map[string][]byte{"a": []byte(permitAll)})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.WithDenyList(dl)
	})
}
