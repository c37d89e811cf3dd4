#!/usr/bin/env bash
# Builds the real kube-apiserver from its Go modules (test/k8s/kube-apiserver)
# and caches the binary by Kubernetes version and Go version, so only the
# first run on a machine pays for the build (~6 min on 2 cores, 170 MB).
# Prints the binary's path on stdout; build output goes to stderr.
#
# Cache: $WARD_KUBE_CACHE, else $XDG_CACHE_HOME/ward-test, else ~/.cache/ward-test.
set -euo pipefail
cd "$(dirname "$0")/../test/k8s/kube-apiserver"

k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
go_version="$(go env GOVERSION)"
cache="${WARD_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward-test}"
bin="$cache/kube-apiserver-$k8s_version-$go_version"

if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "==> building kube-apiserver $k8s_version with $go_version (once per machine; ~6 min on 2 cores)" >&2
  tmp="$bin.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  start=$(date +%s)
  # No DWARF keeps the binary small (it only has to run); no -trimpath, so
  # the compiled packages it shares with test/k8s (client-go, apimachinery)
  # come from the same build cache entries.
  go build -ldflags='-s -w' -o "$tmp" . >&2
  mv "$tmp" "$bin"
  echo "==> built $bin in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
