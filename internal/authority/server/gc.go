package server

import (
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
// (BenchmarkAPINoopUnaryCallers, BenchmarkAPIEncryptUnaryCallers).
const GCPercent = 400

// TuneGC sets the collector's target to GCPercent unless the GOGC
// environment variable is set (then Go has already applied it). `ward
// server` calls it once at start; the benchmarks too, to measure the
// process as it runs.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(GCPercent)
	}
}
