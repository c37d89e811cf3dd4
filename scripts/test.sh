#!/usr/bin/env bash
# ward's one test command: installs what the tests need on a fresh Debian
# machine, then runs every test. Usage: scripts/test.sh (or `make test`).
# Set WARD_TEST_NO_INSTALL=1 to skip the install step.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl ca-certificates)
command -v testssl >/dev/null 2>&1 || need_pkgs+=(testssl.sh)
command -v sslscan >/dev/null 2>&1 || need_pkgs+=(sslscan)
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy) # ward scan against a weak and a strong haproxy
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v softhsm2-util >/dev/null 2>&1 || need_pkgs+=(softhsm2) # PKCS#11 seal tests (docs/hsm.md)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium) # the dashboard test (internal/cli, chromedp)

if [ "${WARD_TEST_NO_INSTALL:-0}" != 1 ] && [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> installing test dependencies: ${need_pkgs[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

echo "==> go vet"
go vet ./...
# test/k8s is a module of its own (Kubernetes stays out of ward's go.mod),
# so ./... above does not reach it. Its kube-apiserver/ main is not vetted:
# that would type-check all of k8s.io/kubernetes; building it (below) is
# its check, and gofmt covers it.
(cd test/k8s && go vet ./...)
echo "==> gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

# Every go test line goes to the terminal and to $log, so that the closing
# "ok"/"FAIL" lines stay in the output (CI reads them) and a per-package
# time summary can be printed at the end.
log="$(mktemp)"
fipslog="$(mktemp)"
e2ebin="$(mktemp -d)"
trap 'rm -rf "$log" "$fipslog" "$e2ebin"' EXIT
rc=0

echo "==> go test (race detector on)"
# -race everywhere: the concurrent packages (store, audit, kms, server,
# workload API) need it and the rest is cheap. -p 2 matches CI's 2 cores.
# The slowest packages (the end-to-end ones above all) are named first,
# slowest first: go test starts packages in the order given, so the rest
# runs beside them rather than after them (the time per package below says
# which are slow). The e2e packages share one ward binary, built here once
# (WARD_E2E_BIN) instead of by each package's TestMain.
slow_pkgs=(./test/e2e/multicluster ./test/e2e ./internal/governance/anomaly ./internal/dataplane/proxy ./test/e2e/etcd)
other_pkgs=()
while read -r p; do
  case "./${p#github.com/wardproject/ward/}" in
  ./test/e2e/multicluster | ./test/e2e | ./internal/governance/anomaly | ./internal/dataplane/proxy | ./test/e2e/etcd) ;;
  *) other_pkgs+=("$p") ;;
  esac
done < <(go list ./...)
go build -o "$e2ebin/ward" ./cmd/ward
set +e
WARD_E2E_BIN="$e2ebin/ward" go test -race -p 2 -timeout 25m -count=1 "${slow_pkgs[@]}" "${other_pkgs[@]}" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || rc=$status

echo "==> go test in FIPS 140-3 mode (GODEBUG=fips140=on) for the crypto paths"
set +e
GODEBUG=fips140=on go test -count=1 -p 2 ./internal/shared/kmscrypto ./internal/shared/checkpoint ./internal/authority/kms ./internal/authority/barrier \
  ./internal/authority/seal ./internal/authority/audit ./internal/authority/server ./envelope 2>&1 | tee "$fipslog"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || rc=$status

echo "==> CGO_ENABLED=0 build (scripts/nocgo.sh)"
bash scripts/nocgo.sh 2>&1 | tee -a "$log" || rc=1

# The real-apiserver tests (test/k8s, its own module). The kube-apiserver
# binary comes from scripts/kube-apiserver.sh, cached by Kubernetes and Go
# version: the first run on a machine builds it (~6 min on 2 cores), later
# runs find it at once. Its build output stays visible here rather than
# inside a silent go test. If the build fails the tests skip saying why,
# except with CI=true, where they fail.
echo "==> kube-apiserver for test/k8s (scripts/kube-apiserver.sh)"
if [ -z "${WARD_KUBE_APISERVER:-}" ]; then
  if kbin="$(bash scripts/kube-apiserver.sh)"; then
    export WARD_KUBE_APISERVER="$kbin"
    echo "$kbin"
  else
    echo "scripts/kube-apiserver.sh failed" >&2
    if [ "${CI:-}" = true ]; then rc=1; fi
  fi
fi
echo "==> go test in test/k8s (real etcd, kube-apiserver, ward)"
set +e
(cd test/k8s && go test -race -p 2 -timeout 25m -count=1 ./...) 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || rc=$status

# Per-package times, slowest first, from go test's closing lines
# ("ok  pkg  12.3s", "FAIL pkg 4.5s").
pkgtimes() {
  awk -v tag="$2" '{
    n = split($0, f, /[ \t]+/)
    if ((f[1] == "ok" || f[1] == "FAIL") && n >= 3 && f[3] ~ /^[0-9.]+s$/) {
      t = f[3]; sub(/s$/, "", t)
      printf "%9.1fs  %-4s %s%s\n", t, f[1], f[2], tag
    }
  }' "$1"
}
echo "==> time per package (slowest first)"
times="$( (pkgtimes "$log" ""; pkgtimes "$fipslog" " (fips)") | sort -rn)"
echo "$times"
echo "$times" | awk '{ t = $1; sub(/s$/, "", t); total += t } END { printf "%9.1fs  in all (packages run 2 at a time)\n", total }'
# Data race reports once more, last: CI keeps only the tail of the output,
# which held only the end of a report (scripts/racereport.sh).
bash scripts/racereport.sh "$log" || true
exit "$rc"
