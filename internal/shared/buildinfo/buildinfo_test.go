package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/wardproject/ward", Version: "v0.0.0-20261207214500-8919ca3abcde+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "8919ca3abcdef"},
			{Key: "vcs.time", Value: "2026-12-07T21:45:00Z"},
			{Key: "vcs.modified", Value: "true"},
			{Key: "GODEBUG", Value: "asynctimerchan=1, fips140=on"},
		},
	}
	for _, tc := range []struct {
		name   string
		bi     *debug.BuildInfo
		ok     bool
		linked string
		want   Info
	}{
		{"no build info", nil, false, "", Info{Version: "dev"}},
		{"devel module, no vcs", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}, true, "", Info{Version: "dev", Go: "go1.26.0"}},
		{"stamped checkout", stamped, true, "", Info{Version: "v0.0.0-20261207214500-8919ca3abcde+dirty", Commit: "8919ca3abcdef", CommitTime: "2026-12-07T21:45:00Z", Modified: true, Go: "go1.26.0", FIPS: "on"}},
		{"link-time version wins", stamped, true, "v1.2.3", Info{Version: "v1.2.3", Commit: "8919ca3abcdef", CommitTime: "2026-12-07T21:45:00Z", Modified: true, Go: "go1.26.0", FIPS: "on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.bi, tc.ok, tc.linked)
			if got.Platform == "" {
				t.Errorf("platform empty")
			}
			got.Platform = ""
			if tc.want.Go == "" {
				tc.want.Go = got.Go // runtime.Version() of this test binary
			}
			if got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestFipsSetting(t *testing.T) {
	for in, want := range map[string]string{"": "", "fips140=only": "only", "a=1,fips140=on,b=2": "on", "xfips140=on": "", "fips140=": ""} {
		if got := fipsSetting(in); got != want {
			t.Errorf("fipsSetting(%q) = %q, want %q", in, got, want)
		}
	}
}
