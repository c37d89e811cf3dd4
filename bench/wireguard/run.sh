#!/usr/bin/env bash
# Network-layer encryption figures (docs/network.md), between two nodes
# (network namespaces on one bridge, each with a real `ward agent` with a
# network section; needs root), side by side in one run:
#
#  - plain: TCP between the nodes' link addresses;
#  - wireguard: TCP between their overlay addresses, through ward's
#    userspace WireGuard (wireguard-go on TUN);
#  - mtls: a ward proxy pair on the link (a's outbound, b's inbound);
#  - both: the same proxy pair between the overlay addresses (layered).
#
# For each: single-stream throughput (median of RUNS runs of SIZE_MB) and
# the round-trip latency of 64-byte messages on one connection (p50, p99 of
# SAMPLES, interleaved across the paths), with the ratios to plain. The
# machine is shared and noisy: read the ratios.
#
#   bench/wireguard/run.sh          # SIZE_MB=256, RUNS=3, SAMPLES=2000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
T=$(mktemp)
WARD_BENCH_NETWORK=1 WARD_BENCH_SIZE_MB=${SIZE_MB:-256} WARD_BENCH_RUNS=${RUNS:-3} WARD_BENCH_SAMPLES=${SAMPLES:-2000} \
  go test -count=1 -timeout 20m -run '^TestBenchNetworkEncryption$' -v ./test/e2e/multicluster 2>&1 |
  grep -E '^(BENCH|--- |FAIL|ok)' | tee "$T" || true
# Rows of bench/run.sh's summary table: each layer's throughput against the plain link.
for p in wireguard mtls both; do
  r=$(awk -v p="$p" '$1 == "BENCH" && $2 == p { gsub(/[()x]/, "", $6); print $6 }' "$T")
  summary "single stream, $p vs plain veth" "${r:-?}x of plain" "plain veth (same run)" "${r:-?}" "-" "-"
done
rm -f "$T"
