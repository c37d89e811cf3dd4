// Package buildinfo says which ward this is: its version, the commit it was
// built from and the toolchain, from the Go build information embedded in
// the binary (or a version set at link time). `ward version`, the
// authority's status and the HA member list report it.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// version overrides the module version when set at link time:
// go build -ldflags "-X github.com/wardproject/ward/internal/shared/buildinfo.version=v1.2.3".
var version string

// Info describes the running binary.
type Info struct {
	// Version: the link-time version, else the main module's version as the
	// go command stamped it (a tag, or a pseudo-version from the commit
	// with "+dirty" for a modified tree), else "dev".
	Version string `json:"version"`
	// Commit, CommitTime and Modified: the VCS stamp, when the binary was
	// built from a checkout ("" when it was not, e.g. go test binaries).
	Commit     string `json:"commit,omitempty"`
	CommitTime string `json:"commit_time,omitempty"`
	Modified   bool   `json:"modified,omitempty"`
	// Go: the toolchain; Platform: GOOS/GOARCH.
	Go       string `json:"go"`
	Platform string `json:"platform"`
	// FIPS: whether the binary runs with the Go FIPS 140-3 module's settings
	// (GODEBUG fips140) baked in at build time.
	FIPS string `json:"fips140,omitempty"`
}

// Read returns the binary's build information (read once).
var Read = sync.OnceValue(func() Info {
	bi, ok := debug.ReadBuildInfo()
	return fromBuildInfo(bi, ok, version)
})

func fromBuildInfo(bi *debug.BuildInfo, ok bool, linked string) Info {
	in := Info{Version: "dev", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if ok && bi != nil {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			in.Version = v
		}
		if bi.GoVersion != "" {
			in.Go = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit = s.Value
			case "vcs.time":
				in.CommitTime = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			case "GODEBUG":
				in.FIPS = fipsSetting(s.Value)
			}
		}
	}
	if linked != "" {
		in.Version = linked
	}
	return in
}

// fipsSetting picks X out of fips140=X in a comma-separated GODEBUG.
func fipsSetting(godebug string) string {
	for item := range strings.SplitSeq(godebug, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(item), "fips140="); ok {
			return v
		}
	}
	return ""
}
