#!/usr/bin/env bash
# ward report at scale: report generation alone (10,000 keys, 100,000
# entries, built and rendered as HTML and JSON; the aim is under 5 s) and
# end to end against a real authority holding as many (read through the
# admin socket, the whole audit log verified, built, rendered). Not part of
# the test suite. Usage: bench/report/run.sh [keys [entries]]
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=${1:-10000}
entries=${2:-100000}
echo "==> load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "==> generation (internal/governance/report)"
go test -run XXX -bench BenchmarkReport10kKeys100kEntries -benchtime 5x -count 3 ./internal/governance/report/ | grep -E '^Benchmark'
echo "==> end to end: $keys keys, $entries entries (setup is not timed)"
WARD_BENCH_REPORT_KEYS=$keys WARD_BENCH_REPORT_ENTRIES=$entries \
  go test -run XXX -bench BenchmarkReportEndToEnd -benchtime 1x -timeout 30m ./internal/cli/ | grep -E '^Benchmark|setup:'
