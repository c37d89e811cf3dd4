#!/bin/sh
# Side-by-side loopback benchmark of the east-west gateway: a ward proxy
# pair direct (ward), the same pair through `ward gateway` (ward-gw), and
# through HAProxy doing the same SNI routing (haproxy-sni: mode tcp,
# req.ssl_sni; Debian package haproxy, installed here if missing), with the
# ratios; then the Go benchmarks of the gateway's per-connection path,
# splice throughput and ClientHello parser. Not part of the test suite.
# Usage: bench/gateway/run.sh [proxybench flags, e.g. -stream-mb 256 -rate 1000]
set -eu
cd "$(dirname "$0")/../.."
. bench/lib.sh
if ! command -v haproxy >/dev/null 2>&1; then
  echo "installing haproxy (apt-get) for the comparison..."
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q haproxy >/dev/null || true
  else sudo apt-get install -y -q haproxy >/dev/null || true; fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ward" ./cmd/ward
go build -o "$tmp/proxybench" ./bench/proxy
haproxy=$(command -v haproxy || true)
echo "== ward proxy pair: direct vs through ward gateway vs through HAProxy ($(go version | cut -d' ' -f3); $("${haproxy:-true}" -v 2>/dev/null | head -1))"
"$tmp/proxybench" -ward "$tmp/ward" -haproxy "$haproxy" -only ward,ward-gw,haproxy-sni -stream-mb 128 "$@" | tee "$tmp/out"
echo
echo "== gateway hot path (go test -bench): new connection, splice, ClientHello parser"
go test ./internal/dataplane/gateway/ -run '^$' -bench 'Connection|Splice|ReadClientHello' -benchtime 2s | grep -E '^Benchmark|^ok'

# Rows of bench/run.sh's summary table: the gateway path against HAProxy
# doing the same SNI routing (columns as in bench/proxy/run.sh).
col() { awk -v p="$1" -v c="$2" '$1 == p && $2 != "skipped" && NF >= 8 { print $c; exit }' "$tmp/out"; }
for c in 2 3 7; do
  case $c in 2) what="stream MB/s";; 3) what="req/s";; 7) what="new conn/s";; esac
  a=$(col ward-gw "$c"); v=$(col haproxy-sni "$c"); x=$(ratio "$a" "$v")
  summary "gateway $what vs haproxy SNI" "${a:-?}" "haproxy-sni ${v:-not run}" "$x" ">= 1.00x" "$(met "$x" '>=' 1)"
done
