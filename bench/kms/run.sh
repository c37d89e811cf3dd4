#!/usr/bin/env bash
# KMS and audit benchmarks for the authority, printed side by side with
# the aims from the authority issue. Machines here are shared and noisy:
# compare ratios between rows of one run, not absolute figures across runs.
#
#   bench/kms/run.sh               # BENCHTIME=2s by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BT=${BENCHTIME:-2s}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

run() { go test -run '^$' -bench "$1" -benchtime "$BT" "$2" 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2; }

echo "== running benchmarks (benchtime $BT) ==" >&2
run 'BenchmarkWrapDataKey' ./internal/shared/kmscrypto
run 'BenchmarkDataKeyInProcess|BenchmarkEncryptDecryptRewrap' ./internal/authority/kms
run 'BenchmarkAPIDataKeyBatch|BenchmarkAPIEncryptUnary|BenchmarkAuditAppendBbolt' ./internal/authority/server
run 'BenchmarkAppendParallel|BenchmarkVerify1M' ./internal/authority/audit

# per_sec NAME -> operations per second from ns/op (or a custom metric).
per_sec() {
  awk -v n="$1" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") { printf "%.0f", 1e9 / $i; exit } }' "$OUT"
}
metric() {
  awk -v n="$1" -v m="$2" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == m) { printf "%.0f", $i; exit } }' "$OUT"
}
ns() { awk -v n="$1" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") { print $i; exit } }' "$OUT"; }

printf '\n%-52s %14s %14s %8s\n' "what" "measured" "aim" "ratio"
row() { # label measured aim
  if [ -z "$2" ]; then printf '%-52s %14s %14s %8s\n' "$1" "n/a" "$3" "-"; return; fi
  printf '%-52s %14s %14s %8s\n' "$1" "$2/s" "$3/s" "$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.2fx", a / b }')"
}
row "data-key wrap, crypto only (hkdf, parallel)" "$(per_sec 'WrapDataKey/aes-256-gcm-hkdf')" 200000
row "data key in-process (kms.Manager, parallel)" "$(per_sec 'DataKeyInProcess')" 200000
row "data keys through the local API, batches of 1000" "$(metric 'APIDataKeyBatch' 'keys/s')" 50000
row "encrypt through the local API, unary (audited)" "$(metric 'APIEncryptUnary' 'ops/s')" 50000
row "audit append, group commit (in-memory store)" "$(metric 'AppendParallel/maxbatch=10000' 'events/s')" 100000
row "audit append, group commit (bbolt, fsync)" "$(metric 'AuditAppendBbolt' 'events/s')" 100000
v=$(ns 'Verify1M')
if [ -n "$v" ]; then
  printf '%-52s %14s %14s %8s\n' "audit verify of 1M events" "$(awk -v x="$v" 'BEGIN { printf "%.2fs", x / 1e9 }')" "5s" "$(awk -v x="$v" 'BEGIN { printf "%.2fx", 5e9 / x }')"
fi
