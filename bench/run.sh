#!/usr/bin/env bash
# Every benchmark suite, one after the other (each prints its own table),
# then ONE summary table: each aim of the performance issue, ward's figure,
# the peer measured in the same run, the ratio (> 1: ward ahead) and
# whether the aim is met. The machine is shared and noisy: read the ratios.
#
#   bench/run.sh                    # everything, modest benchtimes
#   ONLY="kms policy" bench/run.sh  # a subset (directory names under bench/)
set -uo pipefail
cd "$(dirname "$0")"
SUM=$(mktemp)
trap 'rm -f "$SUM"' EXIT
export WARD_BENCH_SUMMARY="$SUM"
. ./lib.sh
export BENCHTIME=${BENCHTIME:-1s}
suites=${ONLY:-"kms policy envelope proxy identity spire apply gateway federation backup hsm wireguard"}
for s in $suites; do
  echo "=================== bench/$s ==================="
  case "$s" in
    envelope) SIZE_MB=${SIZE_MB:-256} FILES=${FILES:-2000} bash envelope/run.sh &&
      if [ -d /dev/shm ]; then WORKDIR=/dev/shm SIZE_MB=${SIZE_MB:-256} FILES=0 bash envelope/run.sh; fi ;; # disk, then tmpfs
    federation) RUNS=${RUNS:-5} ROTATIONS=${ROTATIONS:-2} bash federation/run.sh ;;
    *) bash "$s/run.sh" ;;
  esac
  rc=$?
  [ $rc -eq 0 ] || summary "bench/$s/run.sh" "failed (exit $rc)" "-" "-" "-" "no"
done

echo
echo "=================== summary: ward against each aim (ratio > 1: ward ahead) ==================="
awk -F'\t' 'BEGIN { printf "%-44s %-20s %-40s %-8s %-16s %s\n", "work", "ward", "peer (same run)", "ratio", "aim", "met?" }
  { for (i = 1; i <= 6; i++) gsub(/µ/, "u", $i); printf "%-44s %-20s %-40s %-8s %-16s %s\n", $1, $2, $3, $4, $5, $6 }' "$SUM"
echo "($(nproc) cores, shared; BENCHTIME=$BENCHTIME; rows from one run of each suite)"
