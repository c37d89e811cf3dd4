#!/usr/bin/env bash
# High availability on etcd (issue 15, docs/ha.md). Needs root (network
# namespaces) and Debian's etcd-server.
#   1. Speed, one run: KMS encrypt calls/s and p99 through the failover
#      client over three authorities on a three-member etcd (TLS), beside
#      one authority on bbolt; the leader takeover time after SIGKILL
#      (median and max over TAKEOVERS runs, default 10).
#   2. Soak: TestHAOnEtcdUnderFaults with PHASE (default 20s) of load
#      between its faults (leader SIGKILLed, an etcd member SIGKILLed, an
#      authority cut off from etcd), instead of the suite's 3 s.
#
#   bench/ha/run.sh
#   DURATION=30s TAKEOVERS=20 PHASE=1m bench/ha/run.sh
#   SOAK=0 bench/ha/run.sh           # speed only
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
if [ "$(id -u)" != 0 ]; then
  echo "bench/ha/run.sh: needs root (network namespaces)" >&2
  exit 1
fi
LOG=$(mktemp /tmp/ward-ha-bench-XXXXXX.log)
WARD_HA_BENCH=1 WARD_HA_BENCH_DURATION=${DURATION:-10s} WARD_HA_TAKEOVERS=${TAKEOVERS:-10} \
  go test -count=1 -timeout 0 -run '^TestHABench$' -v ./test/e2e/etcd >"$LOG" 2>&1 || { tail -50 "$LOG"; exit 1; }
grep '^ha-bench:' "$LOG"
val() { grep "^ha-bench: $1" "$LOG" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
r1=$(val single-bbolt calls_per_s); p1=$(val single-bbolt p99_ms)
r3=$(val three-etcd calls_per_s); p3=$(val three-etcd p99_ms)
med=$(val takeover_median takeover_median_ms); max=$(val takeover_median takeover_max_ms); ttl=$(val takeover_median lease_ttl_ms)
summary "HA: KMS encrypt calls/s, 3 authorities on 3-member etcd vs 1 on bbolt" "$r3/s" "$r1/s (bbolt)" "$(ratio "$r3" "$r1")" "-" "-"
summary "HA: KMS encrypt p99, 3 on etcd vs 1 on bbolt" "${p3} ms" "${p1} ms (bbolt)" "$(ratio "$p1" "$p3")" "-" "-"
summary "HA: leader takeover after SIGKILL (median / max)" "${med} / ${max} ms" "lease TTL ${ttl} ms" "$(ratio "$ttl" "$max")" "<= lease TTL + 0.5 s" "$(met "$max" "<=" "$((ttl + 500))")"
if [ "${SOAK:-1}" != 0 ]; then
  WARD_HA_PHASE=${PHASE:-20s} go test -count=1 -timeout 0 -run '^TestHAOnEtcdUnderFaults$' -v ./test/e2e/etcd >>"$LOG" 2>&1 && rc=0 || rc=$?
  grep -E 'ha_netns_test.go|^(--- |FAIL|ok|PASS)' "$LOG" | grep -v "^\s*$" | cut -c1-300 || true
  [ $rc = 0 ] || exit $rc
fi
echo "full output: $LOG"
