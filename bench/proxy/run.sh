#!/bin/sh
# Side-by-side loopback benchmark of the ward proxy pair against a direct
# connection, a bare Go TLS pair and an stunnel4 pair (Debian: apt-get
# install stunnel4), plus the Go benchmarks of the proxy's hot path.
# Usage: bench/proxy/run.sh [proxybench flags, e.g. -stream-mb 256 -rate 1000]
set -eu
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ward" ./cmd/ward
go build -o "$tmp/proxybench" ./bench/proxy
stunnel=$(command -v stunnel4 || command -v stunnel || true)
echo "== ward proxy pair vs direct, bare Go TLS and stunnel ($(go version | cut -d' ' -f3))"
"$tmp/proxybench" -ward "$tmp/ward" -stunnel "$stunnel" "$@"
echo
echo "== hot path (go test -bench): decision, forwarding, new connection"
go test ./internal/dataplane/proxy/ -run '^$' -bench 'Decide|Forward|NewConnection' -benchtime 2s | grep -E '^Benchmark|^ok'
