#!/usr/bin/env bash
# Chaos soak (issue 12, scenario 4): TestChaos in test/e2e/multicluster for DURATION
# instead of its short default (40 s, at most 20 steps), with no bound on
# the number of steps. Three clusters in network namespaces (root only),
# C's gateway between A and C; partitions, SIGKILLed authorities, agents,
# proxies and the gateway, intermediate and root rotations, revocations,
# acknowledged KMS key and policy versions, while A's client keeps calling
# B and C. Prints the seed first and the invariants' summary at the end;
# replay a failure with SEED=<the seed printed>.
#
#   bench/chaos/run.sh                      # DURATION=10m, a new seed
#   DURATION=1h SEED=12345 bench/chaos/run.sh
#
# Not part of bench/run.sh's default suites (a soak, not a measurement).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
if [ "$(id -u)" != 0 ]; then
  echo "bench/chaos/run.sh: needs root (network namespaces)" >&2
  exit 1
fi
DURATION=${DURATION:-10m}
LOG=$(mktemp /tmp/ward-chaos-XXXXXX.log)
WARD_CHAOS_DURATION=$DURATION WARD_CHAOS_SEED=${SEED:-} WARD_CHAOS_STEPS=${STEPS:-0} \
  go test -count=1 -timeout 0 -run '^TestChaos$' -v ./test/e2e/multicluster >"$LOG" 2>&1 && rc=0 || rc=$?
grep -E 'chaos_netns_test.go|^(--- |FAIL|ok|PASS)' "$LOG" || true
echo "full output: $LOG"
exit $rc
