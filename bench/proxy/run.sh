#!/bin/sh
# Side-by-side loopback benchmark of the ward proxy pair against a direct
# connection, a bare Go TLS pair, an stunnel4 pair and an HAProxy 2.6 pair,
# each pair doing the same mTLS job without TLS session resumption, plus the
# ward and HAProxy pairs with it (ward-resume, haproxy-resume: tickets and
# session reuse on) (Debian: stunnel4, haproxy; installed
# here with apt-get when missing), RUNS times taking turns (medians), plus
# the Go benchmarks of the proxy's hot path.
# Usage: [RUNS=3] bench/proxy/run.sh [proxybench flags, e.g. -stream-mb 256 -rate 1000 -profile DIR]
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
echo "== ward proxy pair vs direct, bare Go TLS, stunnel and haproxy ($(go version | cut -d' ' -f3))"
"$tmp/proxybench" -ward "$tmp/ward" -stunnel "$stunnel" -haproxy "$haproxy" \
  -only direct,go-tls,ward,stunnel,haproxy,ward-resume,haproxy-resume -stream-mb 128 -runs "${RUNS:-3}" "$@" | tee "$tmp/out"
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
d=$(col direct 5); g=$(col go-tls 5); w99=$(col ward 5)
if [ -n "$d" ] && [ -n "$g" ] && [ -n "$w99" ]; then
  wa=$((w99 - d)); ga=$((g - d)); over=$((w99 - g))
  summary "p99 added over direct, fixed rate" "$wa µs" "go-tls $ga µs" "-" "<= go-tls + 100 µs" "$(met "$over" '<=' 100)"
fi
