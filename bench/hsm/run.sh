#!/usr/bin/env bash
# HSM wrap/unwrap per second through SoftHSM2 versus software (docs/hsm.md):
# a 32-byte data key wrapped (encrypted) and unwrapped (decrypted) with
# AES-256-GCM, first the crypto alone (one PKCS#11 C_EncryptInit+C_Encrypt
# per wrap against crypto/aes in process), then through the KMS
# (GenerateDataKey and Decrypt of a hardware-backed key against a software
# one, audit included). Needs softhsm2 and a cgo build. Shared, noisy
# machines: compare the rows of one run.
#
#   bench/hsm/run.sh               # BENCHTIME=2s by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
BT=${BENCHTIME:-2s}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
echo "== HSM benchmarks (benchtime $BT) ==" >&2
go test -run '^$' -bench 'BenchmarkGCMWrap' -benchtime "$BT" ./internal/authority/hsm 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2
go test -run '^$' -bench 'BenchmarkHSMDataKey' -benchtime "$BT" ./internal/authority/kms 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2

# rate NAME UNIT -> the custom per-second metric of benchmark NAME.
rate() {
  awk -v n="$1" -v m="$2" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == m) { printf "%.0f", $i; exit } }' "$OUT"
}
printf '\n%-34s %14s %14s %12s\n' "AES-256-GCM, 32-byte data key" "SoftHSM2 /s" "software /s" "software÷hsm"
for level in GCMWrap HSMDataKey; do
  for op in wrap unwrap; do
    h=$(rate "$level/$op/hsm" "${op}s/s")
    s=$(rate "$level/$op/software" "${op}s/s")
    what="$op, crypto only"
    [ "$level" = HSMDataKey ] && what="$op, through the KMS"
    # software÷hsm: how many times slower the HSM path is.
    printf '%-34s %14s %14s %12s\n' "$what" "${h:-n/a}" "${s:-n/a}" "$(ratio "$s" "$h")"
    summary "HSM $what (SoftHSM2)" "${h:-n/a}/s" "software ${s:-n/a}/s" "$(ratio "$h" "$s")" "-" "-"
  done
done
