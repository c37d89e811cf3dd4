#!/usr/bin/env bash
# Workload identity benchmarks: SVID signing at the CA and through the Node
# API, the agent holding 10,000 workloads, Workload API fetch latency.
# Shared, noisy machines: read the ratios to the aims, not absolute times.
#
#   bench/identity/run.sh            # BENCHTIME=2s by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
BT=${BENCHTIME:-2s}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
run() { go test -run '^$' -bench "$1" -benchtime "$BT" "$2" 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2; }

echo "== running benchmarks (benchtime $BT) ==" >&2
run 'BenchmarkSignX509SVID$|BenchmarkSignJWTSVID' ./internal/authority/ca
run 'BenchmarkNodeSignX509SVIDs' ./internal/authority/server
run 'BenchmarkAgentMemoryPerWorkload|BenchmarkAgentBundleRotationPush|BenchmarkWorkloadAPIFetchLatency' ./internal/node/agent

# first value of metric UNIT on the line matching NAME
val() { awk -v n="$1" -v u="$2" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == u) { print $i; exit } }' "$OUT"; }
printf '\n== summary ==\n'
grep -E '^Benchmark' "$OUT" | sed 's/^/  /'
x=$(val 'SignX509SVID-' 'svids/s@2cores')
if [ -n "$x" ]; then
  awk -v r="$x" 'BEGIN { printf "  CA X509-SVID signing on 2 cores: %.0f/s (aim >= 10000/s): %.2fx\n", r, r / 10000 }'
fi

# Rows of bench/run.sh's summary table. The comparisons with SPIRE v1.13.3
# (agent start -> 1,000 SVIDs, Workload API fetch latency, agent RSS,
# authority CPU per SVID) are bench/spire/run.sh's rows; this suite's own
# fetch benchmark is reported here without a peer.
f99=$(val 'WorkloadAPIFetchLatency' 'p99-µs')
summary "FetchX509SVID p99 (go test -bench)" "${f99:-?} µs" "SPIRE: see bench/spire rows" "-" "-" "-"
summary "CA X509-SVID signing, 2 cores" "$(printf '%.0f' "${x:-0}")/s" "aim 10000/s" "$(ratio "$x" 10000)" ">= 1.00x of aim" "$(met "$(ratio "$x" 10000)" '>=' 1)"
