package registry

import (
	"context"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/errs"
)

// TestBinarySelectorNeedsUIDOrGID: an entry selecting only on the binary
// (unix:path, unix:sha256) is refused at creation with a message saying
// what to add: any local user can make /proc show that binary (connect,
// then exec it), so it would hand the SVID to whoever asks. With a uid or
// gid selector it is accepted.
func TestBinarySelectorNeedsUIDOrGID(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	hex64 := strings.Repeat("0", 64)
	for i, tc := range []struct {
		name string
		sel  []string
		ok   bool
	}{
		{"path alone (red-team entry)", []string{"unix:path:/usr/bin/sleep"}, false},
		{"sha256 alone", []string{"unix:sha256:" + hex64}, false},
		{"path and sha256", []string{"unix:path:/usr/bin/sleep", "unix:sha256:" + hex64}, false},
		{"path and supplementary gid", []string{"unix:path:/usr/bin/sleep", "unix:supplementary_gid:10"}, false},
		{"path and uid", []string{"unix:path:/usr/bin/sleep", "unix:uid:65534"}, true},
		{"sha256 and gid", []string{"unix:sha256:" + hex64, "unix:gid:65534"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := entry("/bin"+strings.Repeat("x", i+1), "/ward/agent/n", tc.sel...)
			_, err := f.reg.CreateEntry(ctx, e)
			if tc.ok {
				if err != nil {
					t.Fatalf("CreateEntry: %v", err)
				}
				return
			}
			if err == nil || errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), "unix:uid") {
				t.Fatalf("CreateEntry(%v) = %v, want errs.Invalid saying to add unix:uid or unix:gid", tc.sel, err)
			}
			list, lerr := f.reg.ListEntries(ctx, ListFilter{})
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, got := range list {
				if got.SPIFFEID == e.SPIFFEID {
					t.Fatalf("refused entry was stored: %+v", got)
				}
			}
		})
	}
}
