#!/usr/bin/env bash
# Registering 1,000 entries: `ward apply -f` (one document set, one atomic
# batch) against a loop of `ward entry create` (one process and one RPC per
# entry), on one real authority (bbolt, Shamir), plus the server-side batch
# path as `go test -bench`. Aim (issue 10): 1,000 entries applied in under
# 1 s. This script compares against ward's own CLI loop (the path the issue
# measured at 15-21 s); SPIRE's `spire-server entry create -data`, side by
# side in one run, is in bench/spire/run.sh. Shared, noisy machines: read the ratio.
#
#   bench/apply/run.sh          # N=1000 BENCHTIME=3x by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
N=${N:-1000}
BT=${BENCHTIME:-3x}
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== go test -bench (registry batch path, benchtime $BT) ==" >&2
go test -run '^$' -bench 'BenchmarkApplyBatch1000|BenchmarkCreateEntry1000' -benchtime "$BT" ./internal/authority/registry 2>&1 | grep -E '^Benchmark' | sed 's/^/  /'

go build -o "$WORK/ward" ./cmd/ward
WARD="$WORK/ward"
mkdir -p "$WORK/data"
cat > "$WORK/ward.yaml" <<CFG
trust_domain: bench.example.org
data_dir: $WORK/data
http_address: 127.0.0.1:0
log_level: warn
identity:
  node_api_address: 127.0.0.1:0
CFG
"$WARD" server --config "$WORK/ward.yaml" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
export WARD_ADDRESS="unix://$WORK/data/admin.sock" WARD_STATE_DIR="$WORK/state"
for _ in $(seq 100); do "$WARD" operator status >/dev/null 2>&1 && break; sleep 0.1; done
"$WARD" operator init --shares 2 --threshold 2 >"$WORK/init.out"
grep 'Unseal share' "$WORK/init.out" | sed 's/.*: //' | while read -r share; do echo "$share" | "$WARD" operator unseal >/dev/null; done

parent=spiffe://bench.example.org/ward/agent/node-1
for i in $(seq 1 "$N"); do
  printf -- '---\nkind: Entry\nspiffe_id: spiffe://bench.example.org/apply/w%d\nparent_id: %s\nselectors: [unix:uid:%d]\nlabels: {app: w%d}\n' "$i" "$parent" $((10000 + i)) "$i"
done >"$WORK/entries.yaml"

now() { date +%s.%N; }
t0=$(now)
"$WARD" apply -f "$WORK/entries.yaml" >"$WORK/apply.out"
t1=$(now)
"$WARD" apply -f "$WORK/entries.yaml" >"$WORK/reapply.out"
t2=$(now)
for i in $(seq 1 "$N"); do
  "$WARD" entry create --spiffe-id "spiffe://bench.example.org/loop/w$i" --parent "$parent" --selector "unix:uid:$((20000 + i))" --label "app=w$i" >/dev/null
done
t3=$(now)

grep -q "$N entry(ies) created" "$WORK/apply.out" || { echo "apply did not create $N entries:" >&2; cat "$WORK/apply.out" >&2; exit 1; }
grep -q "No changes" "$WORK/reapply.out" || { echo "re-apply was not a no-op:" >&2; cat "$WORK/reapply.out" >&2; exit 1; }
printf '\n== summary (%d entries, one authority) ==\n' "$N"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v n="$N" 'BEGIN {
  apply = b - a; reapply = c - b; loop = d - c
  printf "  ward apply -f (create):        %6.2f s  (aim < 1 s: %s)\n", apply, apply < 1 ? "met" : "missed"
  printf "  ward apply -f (no changes):    %6.2f s\n", reapply
  printf "  loop of ward entry create:     %6.2f s\n", loop
  printf "  ratio loop / apply:            %6.1fx\n", loop / apply
  printf "  SPIRE entry create -data, same run: bench/spire/run.sh\n"
}'

# Row of bench/run.sh's summary table (issue 17, gap 0): the peer here is
# ward's own CLI loop; SPIRE's batch form is measured by bench/spire.
ta=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
tl=$(awk -v c="$t2" -v d="$t3" 'BEGIN { printf "%.2f", d - c }')
summary "create $N entries" "apply ${ta} s" "entry create loop ${tl} s" "$(ratio "$tl" "$ta")" "< 1 s" "$(met "$ta" '<=' 0.999)"
