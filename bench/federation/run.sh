#!/usr/bin/env bash
# Cross-cluster revocation: the time from `ward revoke` in cluster A to the
# refusal in cluster B (B's proxy closing A's revoked workload's open
# connection), median and max over RUNS runs (default 20). Two real
# authorities, agents and proxies on loopback (the harness of
# test/e2e/crosscluster_test.go); no root needed. The time includes the CLI
# starting up; read it against the issue's bound of 2 s, not as an absolute.
#
#   bench/federation/run.sh            # RUNS=20 by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-20}
WARD_BENCH_REVOKE_RUNS=$RUNS go test -count=1 -timeout 20m -run '^TestBenchCrossClusterRevocation$' -v ./test/e2e 2>&1 |
  grep -E '^(run |BENCH|--- |FAIL|ok)' || true
