#!/usr/bin/env bash
# Envelope encryption benchmark: ward vs age vs raw AES-256-GCM, same input,
# one run, side by side; then rewrap of many small files.
#
#   bench/envelope/run.sh                 # 1 GiB file, 10,000 files
#   SIZE_MB=256 FILES=1000 bench/envelope/run.sh
#   WORKDIR=/dev/shm bench/envelope/run.sh  # keep the disk out of the figures
#   RUNS=5 bench/envelope/run.sh            # medians of 5 runs (default 3)
#
# age is built from the Go module proxy into a temporary GOBIN (never committed).
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
FILES=${FILES:-10000}
RUNS=${RUNS:-3}
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
FS=$(stat -f -c %T "$WORK")

# Each run times every command once, ward and age interleaved; the
# figures are the medians over RUNS runs (the machine is shared).
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
all_we= all_wd= all_wen= all_wdn= all_ae= all_ad= all_aen= all_adn=
for run in $(seq "$RUNS"); do
  echo "run $run of $RUNS ..." >&2
  all_we+=" $(timeit "$BIN/ward" encrypt --local-key key.json -i in.bin -o in.ward)"
  all_ae+=" $(timeit "$BIN/age" -r "$RCPT" -o in.age in.bin)"
  all_wd+=" $(timeit "$BIN/ward" decrypt --local-key key.json -i in.ward -o out.ward.bin)"
  cmp -s in.bin out.ward.bin || { echo "ward round trip differs" >&2; exit 1; }
  rm -f out.ward.bin
  all_ad+=" $(timeit "$BIN/age" -d -i age.key -o out.age.bin in.age)"
  cmp -s in.bin out.age.bin || { echo "age round trip differs" >&2; exit 1; }
  rm -f out.age.bin
  all_wen+=" $(timeit sh -c "'$BIN/ward' encrypt --local-key key.json -i in.bin > /dev/null")"
  all_aen+=" $(timeit sh -c "'$BIN/age' -r '$RCPT' in.bin > /dev/null")"
  all_wdn+=" $(timeit sh -c "'$BIN/ward' decrypt --local-key key.json -i in.ward > /dev/null")"
  all_adn+=" $(timeit sh -c "'$BIN/age' -d -i age.key in.age > /dev/null")"
done
for v in we wd wen wdn ae ad aen adn; do
  eval "t_$v=\$(echo \"\$all_$v\" | median)"
done

echo "measuring the AES-256-GCM ceiling and the library (go test -bench) ..." >&2
# The ceiling: Go's AES-256-GCM sealing / opening one 64 KiB segment hot
# in cache on one core; the machine's ceiling is that times the cores.
RAW=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkSegmentAESGCM$' -benchtime 2s ./envelope/ |
	awk '/^BenchmarkSegmentAESGCM\/seal/ {s=$(NF-1)} /^BenchmarkSegmentAESGCM\/open/ {o=$(NF-1)} END {print s, o}')
LIBE=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkEncrypt$/^aes-256-gcm$/^seg=64K$' -benchtime 2s ./envelope/ | awk '/^BenchmarkEncrypt/ {print $(NF-1)}')
LIBD=$(cd "$ROOT" && go test -run '^$' -bench '^BenchmarkReaderAtWriteTo$' -benchtime 2s ./envelope/ | awk '/^BenchmarkReaderAtWriteTo/ {print $(NF-1)}')
read -r SEAL1 OPEN1 <<<"$RAW"
CORES=$(getconf _NPROCESSORS_ONLN)

echo
echo "input: ${SIZE_MB} MiB, cores: $CORES, workdir: $WORK ($FS), medians of $RUNS runs"
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
printf "%-44s %10s %10.0f\n" "envelope library decrypt (ReaderAt.WriteTo)" "-" "$LIBD"
printf "%-44s %10s %10.0f\n" "AES-256-GCM seal, 1 core, one 64 KiB segment" "-" "$SEAL1"
printf "%-44s %10s %10.0f\n" "AES-256-GCM open, 1 core, one 64 KiB segment" "-" "$OPEN1"
awk -v c="$CORES" -v s="$SEAL1" -v o="$OPEN1" -v b="$BYTES" -v e="$t_wen" -v d="$t_wdn" -v ae="$t_aen" -v ad="$t_adn" -v le="$LIBE" -v ld="$LIBD" 'BEGIN {
  printf "ward CLI vs %d cores x AES-GCM: encrypt %.0f%%, decrypt %.0f%% (to /dev/null)\n", c, 100*b/e/1e6/(c*s), 100*b/d/1e6/(c*o)
  printf "library  vs %d cores x AES-GCM: encrypt %.0f%%, decrypt %.0f%%\n", c, 100*le/(c*s), 100*ld/(c*o)
  printf "ward vs age: encrypt %.1fx, decrypt %.1fx (to /dev/null)\n", ae/e, ad/d }'

# Rows of bench/run.sh's summary table (issue 17, gap 4).
AGEV=$("$BIN/age" --version 2>/dev/null || echo "?")
x=$(ratio "$t_ae" "$t_we"); summary "encrypt ${SIZE_MB} MiB file -> file ($FS)" "${t_we} s (fsync)" "age $AGEV ${t_ae} s (no fsync)" "$x" ">= 1.5x age" "$(met "$x" '>=' 1.5)"
x=$(ratio "$t_ad" "$t_wd"); summary "decrypt ${SIZE_MB} MiB file -> file ($FS)" "${t_wd} s (fsync)" "age ${t_ad} s (no fsync)" "$x" ">= 1.5x age" "$(met "$x" '>=' 1.5)"
x=$(ratio "$t_aen" "$t_wen"); summary "encrypt ${SIZE_MB} MiB file -> /dev/null" "${t_wen} s" "age ${t_aen} s" "$x" ">= 4x age" "$(met "$x" '>=' 4)"
x=$(ratio "$t_adn" "$t_wdn"); summary "decrypt ${SIZE_MB} MiB file -> /dev/null" "${t_wdn} s" "age ${t_adn} s" "$x" "(context)" "-"
for op in encrypt decrypt; do
  t=$t_wen one=$SEAL1 what=seal
  [ "$op" = decrypt ] && t=$t_wdn one=$OPEN1 what=open
  x=$(awk -v c="$CORES" -v r="$one" -v b="$BYTES" -v t="$t" 'BEGIN { printf "%.2fx\n", b / t / 1e6 / (c * r) }')
  summary "CLI $op -> /dev/null vs cores x AES-GCM" "$(rate "$BYTES" "$t") MB/s" "$CORES x $(printf '%.0f' "$one") MB/s ($what, 64 KiB, go test)" "$x" ">= 0.80x" "$(met "$x" '>=' 0.8)"
done
[ "$FILES" -gt 0 ] || exit 0
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
