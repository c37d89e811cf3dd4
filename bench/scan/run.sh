#!/usr/bin/env bash
# Wall time of one endpoint's full scan (every version x suite) on loopback:
# `ward scan` against sslscan and testssl.sh (-p -E: protocols and the
# ciphers of each; sslscan without its heartbleed, renegotiation,
# compression and fallback checks: the same matrix) on the same openssl
# s_server (three configurations), in one
# run, with the ratios; then the go test benchmark. Not part of the test
# suite. Installs sslscan and testssl.sh (Debian) if missing.
# Usage: bench/scan/run.sh [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
for tool in sslscan testssl openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    pkg=$tool; [ "$tool" = testssl ] && pkg=testssl.sh
    echo "installing $pkg (apt-get) for the comparison..."
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get install -y -q --no-install-recommends "$pkg" >/dev/null
  fi
done
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
go build -o "$tmp/ward" ./cmd/ward
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/k.pem" -out "$tmp/c.pem" -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null

# serve NAME ARGS...: an openssl s_server on a free loopback port; sets $addr.
serve() {
  local name=$1; shift
  mkfifo "$tmp/$name.in"
  openssl s_server -accept 127.0.0.1:0 -cert "$tmp/c.pem" -key "$tmp/k.pem" "$@" <"$tmp/$name.in" >"$tmp/$name.out" 2>&1 &
  pids+=($!)
  exec {fd}>"$tmp/$name.in" # keep its stdin open (s_server ends at EOF)
  for _ in $(seq 100); do
    addr=$(sed -n 's/^ACCEPT //p' "$tmp/$name.out" | head -1)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "openssl s_server $* did not start" >&2; cat "$tmp/$name.out" >&2; exit 1
}

# best SECONDS of $runs runs of a command
best() {
  local b=""
  for _ in $(seq "$runs"); do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N)
    b=$(awk -v b="$b" -v t="$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')" 'BEGIN{ if (b=="" || t<b) print t; else print b }')
  done
  echo "$b"
}

echo "== one endpoint, full matrix, loopback, best of $runs ($(go version | cut -d' ' -f3); $(sslscan --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | awk 'NF{print "sslscan " $1; exit}'); $(testssl --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | awk '/testssl/ {print "testssl.sh " $2; exit}'))"
printf "%-34s %10s %10s %12s %14s %14s\n" endpoint ward sslscan testssl.sh sslscan/ward testssl/ward
for cfg in "legacy-all|-cipher ALL:COMPLEMENTOFALL:@SECLEVEL=0 -min_protocol TLSv1" "tls13-only|-tls1_3" "default|"; do
  name=${cfg%%|*}; args=${cfg#*|}
  # shellcheck disable=SC2086
  serve "$name" $args
  w=$(best "$tmp/ward" scan "$addr" --server-name bench.test --fail-on never)
  s=$(best sslscan --no-colour --no-heartbleed --no-renegotiation --no-compression --no-fallback "$addr")
  t=$(best testssl --quiet --color 0 --warnings off -p -E "$addr")
  awk -v n="$name ($addr)" -v w="$w" -v s="$s" -v t="$t" 'BEGIN{printf "%-34s %9.3fs %9.3fs %11.3fs %13.1fx %13.1fx\n", n, w, s, t, s/w, t/w}'
done
echo
echo "== go test -bench (internal/governance/scan)"
go test ./internal/governance/scan/ -run '^$' -bench ScanEndpoint -benchtime 20x | grep -E '^Benchmark|^ok'
