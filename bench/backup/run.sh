#!/usr/bin/env bash
# Backup and restore time for 100,000 stored keys (docs/backup.md):
# create (one snapshot, audit leaf hashes, signed manifest), verify (no
# secret), restore into a fresh bbolt file and into a real etcd (when
# installed). Each row is one full pass over WARD_BENCH_BACKUP_KEYS values
# of ~300 bytes (the size of a KMS key record). Shared, noisy machines:
# compare rows of one run.
#
#   bench/backup/run.sh                        # 100,000 keys, 1 run each
#   WARD_BENCH_BACKUP_KEYS=1000000 COUNT=3 bench/backup/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
export WARD_BENCH_BACKUP_KEYS=${WARD_BENCH_BACKUP_KEYS:-100000}
COUNT=${COUNT:-1}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
if command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; then
  export WARD_BENCH_ETCD=1
fi
echo "== BenchmarkBackup, $WARD_BENCH_BACKUP_KEYS keys, count $COUNT ==" >&2
go test -run '^$' -bench 'BenchmarkBackup' -benchtime 1x -count "$COUNT" -timeout 30m ./internal/authority/backup 2>&1 |
  grep -E '^Benchmark' | tee "$OUT" >&2

# secs PART -> median seconds of the rows for PART.
secs() {
  awk -v n="BenchmarkBackup/$1/" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") print $i / 1e9 }' "$OUT" |
    sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int((NR + 1) / 2)] }'
}
size=$(awk '$1 ~ /BenchmarkBackup\/create/ { for (i = 2; i <= NF; i++) if ($(i+1) == "file-bytes") { printf "%.1f", $i / 1048576; exit } }' "$OUT")
printf '\n%-40s %10s %12s\n' "$WARD_BENCH_BACKUP_KEYS keys (file ${size} MiB)" "seconds" "keys/s"
for part in create verify restore-bbolt restore-memory restore-etcd; do
  s=$(secs "$part")
  [ -n "$s" ] || continue
  printf '%-40s %10s %12s\n' "$part" "$s" "$(awk -v s="$s" -v n="$WARD_BENCH_BACKUP_KEYS" 'BEGIN { printf "%.0f", n / s }')"
  summary "backup $part, $WARD_BENCH_BACKUP_KEYS keys" "${s}s" "- (no peer)" "-" "-" "-"
done
