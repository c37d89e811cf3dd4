#!/usr/bin/env bash
# ward must build without cgo (CGO_ENABLED=0, the default static build) and
# then refuse the PKCS#11 seal with a clear message instead of failing
# obscurely (docs/hsm.md). Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
d="$(mktemp -d)"
trap 'rm -rf "$d"' EXIT
CGO_ENABLED=0 go build -o "$d/ward" ./cmd/ward
CGO_ENABLED=0 go test -count=1 ./internal/authority/hsm
cat > "$d/ward.yaml" <<YAML
trust_domain: nocgo.example.org
data_dir: $d/data
seal:
  type: pkcs11
  pkcs11:
    module: /usr/lib/softhsm/libsofthsm2.so
    token_label: ward
    pin_env: WARD_HSM_PIN
YAML
if out="$(timeout 30 "$d/ward" server --config "$d/ward.yaml" 2>&1)"; then
  echo "a CGO_ENABLED=0 ward started with seal.type pkcs11: $out" >&2; exit 1
fi
case "$out" in
  *"the PKCS#11 seal is not compiled into this binary (built with CGO_ENABLED=0)"*) echo "ok  CGO_ENABLED=0 build refuses the PKCS#11 seal clearly" ;;
  *) echo "unexpected error from a CGO_ENABLED=0 ward with seal.type pkcs11: $out" >&2; exit 1 ;;
esac
