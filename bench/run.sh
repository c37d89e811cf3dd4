#!/usr/bin/env bash
# Every benchmark suite, one after the other (each prints its own table).
set -euo pipefail
cd "$(dirname "$0")"
bash kms/run.sh
SIZE_MB=${SIZE_MB:-256} FILES=${FILES:-2000} bash envelope/run.sh
for s in */run.sh; do
  case "$s" in kms/run.sh|envelope/run.sh) ;; *) bash "$s" ;; esac
done
