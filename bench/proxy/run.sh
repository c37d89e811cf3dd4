#!/bin/sh
# Side-by-side loopback benchmark of the ward proxy pair against a direct
# connection, a bare Go TLS pair, an stunnel4 pair and an HAProxy 2.6 pair,
# each pair doing the same mTLS job without TLS session resumption, plus the
# ward and HAProxy pairs with it (ward-resume, haproxy-resume: tickets and
# session reuse on) (Debian: stunnel4, haproxy; installed
# here with apt-get when missing), RUNS times taking turns (medians), then
# the fixed-rate latency phase (direct, go-tls, ward, haproxy taking turns
# in 1,000-request slices, LAT_SAMPLES requests per path in each of
# LAT_ROUNDS rounds: medians of the rounds' p99s and of the per-round
# differences), plus the Go benchmarks of the proxy's hot path.
# Usage: [RUNS=3] [LAT_ROUNDS=2] [LAT_SAMPLES=20000] [LAT_NICE=-10] bench/proxy/run.sh [proxybench flags, e.g. -stream-mb 256 -rate 1000 -profile DIR]
set -eu
cd "$(dirname "$0")/../.."
. bench/lib.sh
for p in stunnel4 haproxy; do
  if ! command -v "$p" >/dev/null 2>&1; then
    echo "installing $p (apt-get) for the comparison..."
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q "$p" >/dev/null || true
    else sudo apt-get install -y -q "$p" >/dev/null || true; fi
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ward" ./cmd/ward
go build -o "$tmp/proxybench" ./bench/proxy
stunnel=$(command -v stunnel4 || command -v stunnel || true)
haproxy=$(command -v haproxy || true)
# The latency phase runs every path's processes and the load generator at
# nice -10 when root (LAT_NICE): the same priority for every path, above
# the shared machine's builds, whose bursts otherwise make every p99 a
# few ms of waiting for a CPU.
nice=${LAT_NICE:-0}
[ -z "${LAT_NICE:-}" ] && [ "$(id -u)" = 0 ] && nice=-10
echo "== ward proxy pair vs direct, bare Go TLS, stunnel and haproxy ($(go version | cut -d' ' -f3))"
"$tmp/proxybench" -ward "$tmp/ward" -stunnel "$stunnel" -haproxy "$haproxy" \
  -only direct,go-tls,ward,stunnel,haproxy,ward-resume,haproxy-resume -stream-mb 128 -runs "${RUNS:-3}" \
  -lat-rounds "${LAT_ROUNDS:-2}" -lat-samples "${LAT_SAMPLES:-20000}" -lat-nice "$nice" "$@" | tee "$tmp/out"
echo
echo "== hot path (go test -bench): decision, forwarding, new connection"
go test ./internal/dataplane/proxy/ -run '^$' -bench 'Decide|Forward|NewConnection|PeerVerify|RoundTrip' -benchtime "${BENCHTIME:-1s}" | grep -E '^Benchmark|^ok'

# Rows of bench/run.sh's summary table (issue 17, gap 3 and the proxy
# columns): col PATH N -> column N of PATH's row of the medians table
# (2 stream MB/s, 3 req/s, 5 p99 µs at the fixed rate, 7 new conn/s,
# 10 CPU µs per new connection of the path's two processes).
col() { awk -v p="$1" -v c="$2" '$1 == p && $2 ~ /^[0-9]/ && NF >= 10 { print $c; exit }' "$tmp/out"; }
w=$(col ward 7)
for peer in go-tls haproxy stunnel; do
  v=$(col "$peer" 7); x=$(ratio "$w" "$v")
  summary "new mTLS connections/s vs $peer" "${w:-?}/s" "$peer ${v:-not run}/s" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
done
w=$(col ward 10)
for peer in go-tls haproxy; do
  v=$(col "$peer" 10); x=$(ratio "$v" "$w")
  summary "CPU per new mTLS connection vs $peer" "${w:-?} µs" "$peer ${v:-not run} µs" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
done
# Session resumption: new connections of the resuming ward pair against
# the same pair not resuming and the resuming HAProxy pair.
r=$(col ward-resume 7)
for peer in ward haproxy-resume; do
  v=$(col "$peer" 7); x=$(ratio "$r" "$v")
  summary "new mTLS conn/s, resumed, vs $peer" "${r:-?}/s" "$peer ${v:-not run}/s" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
done
r=$(col ward-resume 10); v=$(col haproxy-resume 10); x=$(ratio "$v" "$r")
summary "CPU per new mTLS conn, resumed, vs haproxy-resume" "${r:-?} µs" "haproxy-resume ${v:-not run} µs" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
for peer in haproxy stunnel; do
  for c in 2 3; do
    what="stream MB/s, 1 conn"; unit=" MB/s"; [ "$c" = 3 ] && { what="req/s, 8 conns"; unit="/s"; }
    a=$(col ward "$c"); v=$(col "$peer" "$c"); x=$(ratio "$a" "$v")
    summary "proxy pair $what vs $peer" "${a:-?}$unit" "$peer ${v:-not run}$unit" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
  done
done
# The fixed-rate latency phase (latency.go): medians over the rounds of
# each round's p99 difference (the paths take turns within a round).
lat() { awk -v d="$1" '$1 == "latadd" && $2 == d { print $4; exit }' "$tmp/out"; }
wa=$(lat ward-direct); ga=$(lat go-tls-direct); over=$(lat ward-go-tls)
if [ -n "$wa" ] && [ -n "$ga" ] && [ -n "$over" ]; then
  summary "p99 added over direct, 1000 req/s" "$wa µs" "go-tls $ga µs (ward-go-tls $over)" "-" "<= go-tls + 100 µs" "$(met "${over#+}" '<=' 100)"
fi
