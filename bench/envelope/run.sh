#!/usr/bin/env bash
# Envelope encryption benchmark: ward vs age vs raw AES-256-GCM, same input,
# one run, side by side; then rewrap of many small files.
#
#   bench/envelope/run.sh                 # 1 GiB file, 10,000 files
#   SIZE_MB=256 FILES=1000 bench/envelope/run.sh
#   WORKDIR=/dev/shm bench/envelope/run.sh  # keep the disk out of the figures
#
# age is built from the Go module proxy into a temporary GOBIN (never committed).
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
FILES=${FILES:-10000}
AGE_VERSION=${AGE_VERSION:-latest}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=$(mktemp -d "${WORKDIR:-${TMPDIR:-/tmp}}/ward-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BIN="$WORK/bin"
mkdir -p "$BIN"

echo "building ward and age ($AGE_VERSION) ..." >&2
(cd "$ROOT" && go build -o "$BIN/ward" ./cmd/ward)
GOBIN="$BIN" GOFLAGS= go install "filippo.io/age/cmd/age@$AGE_VERSION" "filippo.io/age/cmd/age-keygen@$AGE_VERSION" 2>&1 | grep -v '^go: downloading' >&2 || true
[ -x "$BIN/age" ] || { echo "could not build age from the module proxy" >&2; exit 1; }

now() { date +%s.%N; }
# rate BYTES SECONDS -> MB/s
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
# timeit CMD... : prints elapsed seconds
timeit() { local t0 t1; t0=$(now); "$@"; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'; }

cd "$WORK"
echo "creating a ${SIZE_MB} MiB input in $WORK ..." >&2
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > in.bin
BYTES=$(stat -c %s in.bin)
"$BIN/ward" local-key new key.json --name bench >/dev/null
"$BIN/age-keygen" -o age.key 2>/dev/null
RCPT=$("$BIN/age-keygen" -y age.key)

cat in.bin > /dev/null # warm the page cache

t_we=$(timeit "$BIN/ward" encrypt --local-key key.json -i in.bin -o in.ward)
t_wd=$(timeit "$BIN/ward" decrypt --local-key key.json -i in.ward -o out.ward.bin)
cmp -s in.bin out.ward.bin || { echo "ward round trip differs" >&2; exit 1; }
rm -f out.ward.bin
t_wen=$(timeit sh -c "'$BIN/ward' encrypt --local-key key.json -i in.bin > /dev/null")
t_wdn=$(timeit sh -c "'$BIN/ward' decrypt --local-key key.json -i in.ward > /dev/null")

t_ae=$(timeit "$BIN/age" -r "$RCPT" -o in.age in.bin)
t_ad=$(timeit "$BIN/age" -d -i age.key -o out.age.bin in.age)
cmp -s in.bin out.age.bin || { echo "age round trip differs" >&2; exit 1; }
rm -f out.age.bin
t_aen=$(timeit sh -c "'$BIN/age' -r '$RCPT' in.bin > /dev/null")
t_adn=$(timeit sh -c "'$BIN/age' -d -i age.key in.age > /dev/null")

echo "measuring raw AES-256-GCM (go test -bench) ..." >&2
RAW=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkRawAESGCM' -benchtime 2s ./envelope/ |
	awk '/^BenchmarkRawAESGCM-/ {s=$(NF-1)} /^BenchmarkRawAESGCMParallel-/ {p=$(NF-1)} END {print s, p}')
LIBE=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkEncrypt$/^aes-256-gcm$/^seg=64K$' -benchtime 2s ./envelope/ | awk '/^BenchmarkEncrypt/ {print $(NF-1)}')
LIBD=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkDecrypt$/^aes-256-gcm$' -benchtime 2s ./envelope/ | awk '/^BenchmarkDecrypt/ {print $(NF-1)}')
LIB="$LIBE $LIBD"
RAW="$RAW $LIB"
read -r RAW1 RAWN LIBE LIBD <<<"$RAW"
CORES=$(getconf _NPROCESSORS_ONLN)

echo
echo "input: ${SIZE_MB} MiB, cores: $CORES, workdir: $WORK"
printf "%-44s %10s %10s\n" "" "seconds" "MB/s"
row() { printf "%-44s %10s %10s\n" "$1" "$2" "$(rate "$BYTES" "$2")"; }
row "ward encrypt  (file -> file, fsync+rename)" "$t_we"
row "ward decrypt  (file -> file, fsync+rename)" "$t_wd"
row "ward encrypt  (file -> /dev/null)" "$t_wen"
row "ward decrypt  (file -> /dev/null)" "$t_wdn"
row "age encrypt   (file -> file)" "$t_ae"
row "age decrypt   (file -> file)" "$t_ad"
row "age encrypt   (file -> /dev/null)" "$t_aen"
row "age decrypt   (file -> /dev/null)" "$t_adn"
printf "%-44s %10s %10.0f\n" "envelope library encrypt (64 MiB in memory)" "-" "$LIBE"
printf "%-44s %10s %10.0f\n" "envelope library decrypt (64 MiB in memory)" "-" "$LIBD"
printf "%-44s %10s %10.0f\n" "raw AES-256-GCM, 1 core, 64 KiB segments" "-" "$RAW1"
printf "%-44s %10s %10.0f\n" "raw AES-256-GCM, all cores" "-" "$RAWN"
awk -v c="$CORES" -v r="$RAW1" -v b="$BYTES" -v e="$t_wen" -v d="$t_wdn" -v ae="$t_aen" -v ad="$t_adn" -v le="$LIBE" -v ld="$LIBD" 'BEGIN {
  printf "ward CLI vs %d x single-core AES-GCM: encrypt %.0f%%, decrypt %.0f%% (to /dev/null)\n", c, 100*b/e/1e6/(c*r), 100*b/d/1e6/(c*r)
  printf "library  vs %d x single-core AES-GCM: encrypt %.0f%%, decrypt %.0f%%\n", c, 100*le/(c*r), 100*ld/(c*r)
  printf "ward vs age: encrypt %.1fx, decrypt %.1fx (to /dev/null)\n", ae/e, ad/d }'


# Rows of bench/run.sh's summary table (issue 17, gap 4).
AGEV=$("$BIN/age" --version 2>/dev/null || echo "?")
x=$(ratio "$t_ae" "$t_we"); summary "encrypt ${SIZE_MB} MiB file -> file" "${t_we} s (fsync)" "age $AGEV ${t_ae} s (no fsync)" "$x" ">= 1.5x age" "$(met "$x" '>=' 1.5)"
x=$(ratio "$t_ad" "$t_wd"); summary "decrypt ${SIZE_MB} MiB file -> file" "${t_wd} s (fsync)" "age ${t_ad} s (no fsync)" "$x" ">= 1.5x age" "$(met "$x" '>=' 1.5)"
x=$(ratio "$t_aen" "$t_wen"); summary "encrypt ${SIZE_MB} MiB file -> /dev/null" "${t_wen} s" "age ${t_aen} s" "$x" ">= 4x age" "$(met "$x" '>=' 4)"
x=$(ratio "$t_adn" "$t_wdn"); summary "decrypt ${SIZE_MB} MiB file -> /dev/null" "${t_wdn} s" "age ${t_adn} s" "$x" "(context)" "-"
for op in encrypt decrypt; do
  t=$t_wen; [ "$op" = decrypt ] && t=$t_wdn
  x=$(awk -v c="$CORES" -v r="$RAW1" -v b="$BYTES" -v t="$t" 'BEGIN { printf "%.2fx\n", b / t / 1e6 / (c * r) }')
  summary "CLI $op -> /dev/null vs cores x AES-GCM" "$(rate "$BYTES" "$t") MB/s" "$CORES x $(printf '%.0f' "$RAW1") MB/s (1 core, go test)" "$x" ">= 0.80x" "$(met "$x" '>=' 0.8)"
done
echo >&2
echo "preparing $FILES small files for rewrap ..." >&2
mkdir -p small
head -c $((FILES * 1024)) /dev/urandom | split -b 1024 -a 6 - small/f.
"$BIN/ward" encrypt --local-key key.json -i small -o small.enc 2>/dev/null
"$BIN/ward" local-key rotate key.json >/dev/null
t_rw=$(timeit sh -c "'$BIN/ward' rewrap --local-key key.json small.enc 2>rewrap.log")
tail -1 rewrap.log
"$BIN/ward" inspect "$(ls -d small.enc/* | head -1)" | grep 'Key version'
printf "rewrap of %d files: %s s (%.0f files/s)\n" "$FILES" "$t_rw" "$(awk -v n="$FILES" -v t="$t_rw" 'BEGIN { print n / t }')"
