#!/usr/bin/env bash
# KMS and audit benchmarks for the authority, printed side by side with
# the aims from the authority issue. Machines here are shared and noisy:
# compare ratios between rows of one run, not absolute figures across runs.
#
#   bench/kms/run.sh               # BENCHTIME=2s by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
BT=${BENCHTIME:-2s}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

run() { go test -run '^$' -bench "$1" -benchtime "$BT" "$2" 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2; }

echo "== running benchmarks (benchtime $BT) ==" >&2
run 'BenchmarkWrapDataKey' ./internal/shared/kmscrypto
run 'BenchmarkDataKeyInProcess|BenchmarkEncryptDecryptRewrap' ./internal/authority/kms
run 'BenchmarkAPIDataKeyBatch|BenchmarkAPIEncryptUnary|BenchmarkAPINoopUnaryCallers|BenchmarkKMSPluginEncryptCallers|BenchmarkKMSEncryptAuditedCallers|BenchmarkAuditAppendBbolt|BenchmarkNodeKMSEncryptCallers|BenchmarkKMSPluginMTLSEncryptCallers' ./internal/authority/server
run 'BenchmarkWorkloadKMSCallers' ./internal/authority/nodeapi
run 'BenchmarkAppendParallel|BenchmarkAppendClosedLoop|BenchmarkVerify1M' ./internal/authority/audit

# per_sec NAME -> operations per second from ns/op (or a custom metric).
per_sec() {
  awk -v n="$1" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") { printf "%.0f", 1e9 / $i; exit } }' "$OUT"
}
metric() {
  awk -v n="$1" -v m="$2" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == m) { printf "%.0f", $i; exit } }' "$OUT"
}
cpu() { awk -v n="$1" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "cpu-µs/op") { printf "%.1f", $i; exit } }' "$OUT"; }
ns() { awk -v n="$1" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") { print $i; exit } }' "$OUT"; }

printf '\n%-52s %14s %14s %8s\n' "what" "measured" "aim" "ratio"
row() { # label measured aim
  if [ -z "$2" ]; then printf '%-52s %14s %14s %8s\n' "$1" "n/a" "$3" "-"; return; fi
  printf '%-52s %14s %14s %8s\n' "$1" "$2/s" "$3/s" "$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.2fx", a / b }')"
}
row "data-key wrap, crypto only (hkdf, parallel)" "$(per_sec 'WrapDataKey/aes-256-gcm-hkdf')" 200000
row "data key in-process (kms.Manager, parallel)" "$(per_sec 'DataKeyInProcess')" 200000
row "data keys through the local API, batches of 1000" "$(metric 'APIDataKeyBatch' 'keys/s')" 50000
row "encrypt through the local API, unary (audited)" "$(metric 'APIEncryptUnary-' 'ops/s')" 50000
row "encrypt through the local API, unary, 64 callers" "$(metric 'APIEncryptUnaryCallers/callers=64' 'ops/s')" 50000
row "audit append, group commit (in-memory store)" "$(metric 'AppendParallel/maxbatch=10000' 'events/s')" 100000
row "audit append, group commit (bbolt, fsync)" "$(metric 'AuditAppendBbolt' 'events/s')" 100000
v=$(ns 'Verify1M')
if [ -n "$v" ]; then
  printf '%-52s %14s %14s %8s\n' "audit verify of 1M events" "$(awk -v x="$v" 'BEGIN { printf "%.2fs", x / 1e9 }')" "5s" "$(awk -v x="$v" 'BEGIN { printf "%.2fx", 5e9 / x }')"
fi

# Unary vs batched vs in-process, side by side: the same encrypt (or data
# key) through the API one call at a time, through the Kubernetes KMS v2
# plugin (its unix socket, then the admin socket), in batches, and in
# process (audited through the same log and bbolt file, or with an
# in-memory recorder: the ceiling). "no-op via API" is the same request and
# reply through the same gRPC stack with a method that does nothing: what
# the stack itself carries on this machine, client and server sharing the
# cores.
inproc=$(per_sec 'EncryptDecryptRewrap/encrypt')
batched=$(metric 'APIDataKeyBatch' 'keys/s')
# cpu µs/call is the process's CPU time (user + system: client, server,
# committer and GC, all in the test process) over the run ÷ calls: steadier
# than ops/s on a shared machine, where a rate also counts waiting for a core.
printf '\n%-44s %12s %10s %12s %12s %14s %12s\n' "KMS encrypt, callers" "ops/s" "events/cmt" "p50 µs" "p99 µs" "÷ in-process" "cpu µs/call"
for c in 1 8 64; do
  for kind in APIEncryptUnaryCallers KMSPluginEncryptCallers KMSEncryptAuditedCallers APINoopUnaryCallers; do
    n="$kind/callers=$c-"
    case $kind in
    APIEncryptUnaryCallers) label="unary via API" ;;
    KMSPluginEncryptCallers) label="KMS v2 plugin (unix socket -> API)" ;;
    KMSEncryptAuditedCallers) label="in process, audited (bbolt)" ;;
    APINoopUnaryCallers) label="no-op via API (the stack's ceiling)" ;;
    esac
    ops=$(metric "$n" 'ops/s')
    [ -z "$ops" ] && continue
    ev=$(metric "$n" 'events/commit'); [ "$kind" = APINoopUnaryCallers ] && ev="-"
    printf '%-44s %12s %10s %12s %12s %14s %12s\n' "$label, $c" "$ops" "$ev" \
      "$(metric "$n" 'p50-µs')" "$(metric "$n" 'p99-µs')" \
      "$([ -n "$inproc" ] && awk -v a="$ops" -v b="$inproc" 'BEGIN { printf "%.3f", a / b }')" \
      "$(cpu "$n")"
  done
done
[ -n "$batched" ] && printf '%-44s %12s %10s %12s %12s %14s\n' "data keys via API, batches of 1000" "$batched" "-" "-" "-" \
  "$([ -n "$inproc" ] && awk -v a="$batched" -v b="$inproc" 'BEGIN { printf "%.3f", a / b }')"
[ -n "$inproc" ] && printf '%-44s %12s %10s %12s %12s %14s\n' "in process, in-memory recorder (ceiling)" "$inproc" "-" "-" "-" "1.000"
# The workload KMS over mTLS (Node API: TLS 1.3 with the workload's SVID,
# authentication, policy decision) on the real authority (bbolt audit), the
# KMS v2 plugin in its mTLS mode in front of it, the same with an audit
# recorder that keeps nothing, and a no-op KMS on the same mTLS server: the
# stack's ceiling.
for c in 8 64; do
  for n in "NodeKMSEncryptCallers/callers=$c-" "KMSPluginMTLSEncryptCallers/callers=$c-" "WorkloadKMSCallers/encrypt/callers=$c-" "WorkloadKMSCallers/noop/callers=$c-"; do
    case $n in
    Node*) label="workload KMS via Node API mTLS (bbolt)" ;;
    KMSPlugin*) label="KMS v2 plugin, mTLS mode (socket -> Node API)" ;;
    *encrypt*) label="workload KMS via mTLS, audit discarded" ;;
    *) label="no-op via Node API mTLS (the ceiling)" ;;
    esac
    ops=$(metric "$n" 'ops/s')
    [ -z "$ops" ] && continue
    ev=$(metric "$n" 'events/commit'); [ -z "$ev" ] && ev="-"
    printf '%-44s %12s %10s %12s %12s %14s %12s\n' "$label, $c" "$ops" "$ev" \
      "$(metric "$n" 'p50-µs')" "$(metric "$n" 'p99-µs')" \
      "$([ -n "$inproc" ] && awk -v a="$ops" -v b="$inproc" 'BEGIN { printf "%.3f", a / b }')" \
      "$(cpu "$n")"
  done
done
printf '%s\n' "aim: unary via API, 64 callers >= 50000 ops/s with p99 < 2000 µs"
for c in 1 8 64; do
  n="AppendClosedLoop/callers=$c-"
  ev=$(metric "$n" 'events/s')
  [ -n "$ev" ] && printf 'audit group commit, simulated 500µs fsync, %2d callers: %8s events/s %6s events/commit\n' "$c" "$ev" "$(metric "$n" 'events/commit')"
done

# Rows of bench/run.sh's summary table (issue 17, gap 1).
u64=$(metric 'APIEncryptUnaryCallers/callers=64-' 'ops/s')
p64=$(metric 'APIEncryptUnaryCallers/callers=64-' 'p99-µs')
a64=$(metric 'KMSEncryptAuditedCallers/callers=64-' 'ops/s')
summary "KMS unary encrypt via API, 64 callers" "${u64:-?}/s" "aim 50000/s; in-process audited ${a64:-?}/s" "$(ratio "$u64" 50000)" ">= 1.00x of aim" "$(met "$(ratio "$u64" 50000)" '>=' 1)"
summary "KMS unary via API, 64 callers, p99" "${p64:-?} µs" "-" "-" "< 2000 µs" "$(met "$p64" '<=' 1999)"
summary "KMS unary via API / in-process (ceiling)" "${u64:-?}/s" "in-process ${inproc:-?}/s" "$(ratio "$u64" "$inproc")" "(context)" "-"
n64=$(metric 'APINoopUnaryCallers/callers=64-' 'ops/s')
summary "KMS unary via API / no-op stack, 64 callers" "${u64:-?}/s" "no-op, same gRPC stack ${n64:-?}/s" "$(ratio "$u64" "$n64")" "(context: ceiling)" "-"
k64=$(metric 'KMSPluginEncryptCallers/callers=64-' 'ops/s')
kp99=$(metric 'KMSPluginEncryptCallers/callers=64-' 'p99-µs')
summary "KMS v2 plugin Encrypt, 64 callers" "${k64:-?}/s" "aim 50000/s; unary via API ${u64:-?}/s" "$(ratio "$k64" 50000)" ">= 1.00x of aim" "$(met "$(ratio "$k64" 50000)" '>=' 1)"
summary "KMS v2 plugin Encrypt, 64 callers, p99" "${kp99:-?} µs" "-" "-" "< 2000 µs" "$(met "$kp99" '<=' 1999)"
cu=$(cpu 'APIEncryptUnaryCallers/callers=64-')
cn=$(cpu 'APINoopUnaryCallers/callers=64-')
ca=$(cpu 'KMSEncryptAuditedCallers/callers=64-')
summary "KMS unary via API, CPU per call, 64 callers" "${cu:-?} µs" "no-op, same gRPC stack ${cn:-?} µs; in process, audited ${ca:-?} µs" "$(ratio "$cn" "$cu")" "(context: no-op ÷ encrypt)" "-"
w64=$(metric 'NodeKMSEncryptCallers/callers=64-' 'ops/s')
wp99=$(metric 'NodeKMSEncryptCallers/callers=64-' 'p99-µs')
wn64=$(metric 'WorkloadKMSCallers/noop/callers=64-' 'ops/s')
summary "workload KMS via Node API mTLS, 64 callers" "${w64:-?}/s" "aim 50000/s; no-op on the same mTLS stack ${wn64:-?}/s" "$(ratio "$w64" 50000)" ">= 1.00x of aim" "$(met "$(ratio "$w64" 50000)" '>=' 1)"
summary "workload KMS via Node API mTLS, 64 callers, p99" "${wp99:-?} µs" "-" "-" "< 2000 µs" "$(met "$wp99" '<=' 1999)"
summary "workload KMS via Node API mTLS, CPU per call" "$(cpu 'NodeKMSEncryptCallers/callers=64-') µs" "no-op on the same mTLS stack $(cpu 'WorkloadKMSCallers/noop/callers=64-') µs" "-" "(context)" "-"
