package server

import (
	"fmt"
	"os"
	"runtime/debug"
)

// GCPercent is the garbage collector's target the authority process runs
// with (TuneGC) unless GOGC says otherwise.
//
// The authority's live heap is small (tens of MiB) while every API call
// allocates 10–16 KB, most of it in gRPC: with Go's default of 100 a
// collection starts every few thousand calls, and collecting cost a quarter
// of the CPU of a unary call through the admin socket. At 400 the heap may
// grow to five times the live heap before a collection (still well inside
// the memory limit deploy/authority.yaml sets, which GOMEMLIMIT there makes
// the collector respect), and a call costs about a fifth less CPU
// (BenchmarkAPINoopUnaryCallers, BenchmarkAPIEncryptUnaryCallers). Without
// GOMEMLIMIT, TuneGC sets a limit itself (memlimit.go).
const GCPercent = 400

// GCSettings is what TuneGC chose, for the start-up log.
type GCSettings struct {
	GOGC string // "400", or "env" when GOGC is set
	// MemoryLimit is the soft limit, "env" when GOMEMLIMIT is set, or
	// "none" when neither a cgroup limit nor MemTotal could be read.
	MemoryLimit string
	// Source is where the limit came from (MemoryLimit.Source).
	Source string
}

// TuneGC sets the collector's target to GCPercent unless the GOGC
// environment variable is set (then Go has already applied it), and, unless
// GOMEMLIMIT is set, a soft memory limit (debug.SetMemoryLimit) of
// CgroupMemoryFraction of the process's cgroup memory limit or else
// HostMemoryFraction of the machine's memory, so the heap GCPercent lets
// grow stays bounded. `ward server` calls it once at start and logs what it
// returns; the benchmarks too, to measure the process as it runs.
func TuneGC() GCSettings {
	return tuneGC(os.LookupEnv, func() (MemoryLimit, bool) { return chooseMemoryLimit(os.DirFS("/")) })
}

func tuneGC(env func(string) (string, bool), choose func() (MemoryLimit, bool)) GCSettings {
	out := GCSettings{GOGC: "env", MemoryLimit: "env"}
	if _, set := env("GOGC"); !set {
		debug.SetGCPercent(GCPercent)
		out.GOGC = fmt.Sprint(GCPercent)
	}
	if _, set := env("GOMEMLIMIT"); set {
		return out
	}
	m, ok := choose()
	if !ok || m.Bytes <= 0 {
		out.MemoryLimit = "none"
		return out
	}
	debug.SetMemoryLimit(m.Bytes)
	out.MemoryLimit, out.Source = fmt.Sprintf("%dMiB", m.Bytes>>20), m.Source
	return out
}
