#!/usr/bin/env bash
# Policy decisions at 10,000 policies: the compiled, indexed Set with its
# decision cache (as the proxy and the authority call it), the same without
# the cache, and cedar-go handed the whole set (the peer: what calling
# cedar-go directly costs). Aim (issue 17, gap 2): p99 < 2 µs and <= 2
# allocations per decision on the hot path. Then the sweep a new policy
# version starts in a proxy: 100,000 open connections decided again (no aim
# is set; reported). Shared, noisy machines: each benchmark runs COUNT
# times and the figures are medians (p50 and p99 are the benchmark's own,
# over every decision of a run).
#
#   bench/policy/run.sh            # BENCHTIME=1s, COUNT=3 by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
BT=${BENCHTIME:-1s}
COUNT=${COUNT:-3}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
run() { go test -run '^$' -bench "$1" -benchtime "$2" -count "$COUNT" "$3" 2>&1 | grep -E '^Benchmark' | tee -a "$OUT" >&2; }
echo "== policy decisions (benchtime $BT, $COUNT runs; cedar-go on the whole set: 200x; sweep: 3x) ==" >&2
run 'BenchmarkDecide$' "$BT" ./internal/shared/policy
run 'BenchmarkDecide10k/unindexed' 200x ./internal/shared/policy
run 'BenchmarkRecheck' 3x ./internal/dataplane/proxy
# val NAME UNIT -> the median over the runs of the figure UNIT of benchmark NAME.
val() {
  awk -v n="$1" -v u="$2" '$1 ~ n { for (i = 2; i <= NF; i++) if ($(i+1) == u) { print $i; break } }' "$OUT" |
    sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

printf '\n%-36s %10s %10s %10s\n' "10,000 policies (median of $COUNT)" "p50 ns" "p99 ns" "allocs/op"
for k in mixed cached uncached; do
  n="policies=10000/$k-"
  printf '%-36s %10s %10s %10s\n' "Decide, $k" "$(val "$n" p50-ns)" "$(val "$n" p99-ns)" "$(val "$n" allocs/op)"
done
printf '%-36s %10s %10s %10s\n' "cedar-go, whole set (peer)" "$(val 'unindexed-' p50-ns)" "$(val 'unindexed-' p99-ns)" "$(val 'unindexed-' allocs/op)"
printf '\n%-36s %10s %10s %12s %10s\n' "re-decide 100,000 open connections" "ms/sweep" "ns/conn" "cpu-ns/conn" "allocs/op"
for k in distinct shared; do
  printf '%-36s %10s %10s %12s %10s\n' "$k principals" "$(val "Recheck/$k-" ms/sweep)" "$(val "Recheck/$k-" ns/conn)" \
    "$(val "Recheck/$k-" cpu-ns/conn)" "$(val "Recheck/$k-" allocs/op)"
done

m99=$(val 'policies=10000/mixed-' p99-ns); ma=$(val 'policies=10000/mixed-' allocs/op)
u99=$(val 'policies=10000/uncached-' p99-ns); ua=$(val 'policies=10000/uncached-' allocs/op)
c99=$(val 'unindexed-' p99-ns)
summary "policy decision p99, 10k policies (mix)" "${m99:-?} ns" "cedar-go whole set ${c99:-?} ns" "$(ratio "$c99" "$m99")" "< 2000 ns" "$(met "$m99" '<=' 1999)"
summary "policy decision allocs, 10k policies (mix)" "${ma:-?}/op" "-" "-" "<= 2/op" "$(met "$ma" '<=' 2)"
summary "policy decision uncached, 10k: p99, allocs" "${u99:-?} ns, ${ua:-?}/op" "-" "-" "< 2000 ns, <= 2" "$(awk -v p="$u99" -v a="$ua" 'BEGIN { if (p == "") print "-"; else print (p < 2000 && a <= 2) ? "yes" : "no" }')"
sd=$(val 'Recheck/distinct-' ms/sweep); sc=$(val 'Recheck/distinct-' cpu-ns/conn)
summary "policy sweep, 100k open conns re-decided" "${sd:-?} ms, ${sc:-?} cpu-ns/conn" "- (no peer)" "-" "none set (reported)" "-"
