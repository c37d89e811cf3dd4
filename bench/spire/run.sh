#!/usr/bin/env bash
# Workload identity, ward against SPIRE v1.13.3, side by side in one run,
# same work on both: a server on loopback (SPIRE: sqlite3 datastore, join
# token node attestation, in-memory keys), one agent (unix workload
# attestor, Workload API on a unix socket), X509-SVIDs of 1 h TTL with
# ec-p256 keys, default sync intervals (5 s on both).
#
#   1. create N entries in bulk: `ward apply -f` vs `spire-server entry
#      create -data` (plus one entry for the latency probe);
#   2. start the agent; time until a workload (uid 0, gid 4242) holds all
#      N SVIDs through the Workload API; the server's CPU time over that
#      span divided by N (authority CPU per SVID, attestation included);
#   3. the agent's RSS then; 4. FetchX509SVID p50/p99 on a reused
#      go-spiffe client (one SVID, uid 0, gid 0).
#   5. with the agent running, N more entries (gid 4243): time from the
#      last one created until the workload holds them all.
#
# SPIRE is built as Go tools of the separate module bench/spire (nothing
# enters ward's go.mod) and cached under ~/.cache/ward-test/spire-VERSION.
# Needs root (the probe switches its gid). Read ratios, not absolute times.
#
#   bench/spire/run.sh        # N=1000 LAT=2000 by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. bench/lib.sh
N=${N:-1000}
LAT=${LAT:-2000}
VER=v1.13.3
CACHE=${WARD_TEST_CACHE:-$HOME/.cache/ward-test}/spire-$VER
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
GID=4242
GID2=4243
TD=bench.example.org

if [ ! -x "$CACHE/spire-server" ] || [ ! -x "$CACHE/spire-agent" ]; then
  echo "== building SPIRE $VER (once; cached in $CACHE) ==" >&2
  mkdir -p "$CACHE"
  (cd bench/spire && GOBIN="$CACHE" CGO_ENABLED=1 go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent)
fi
(cd bench/spire && go build -o "$WORK/fetch" ./fetch)
go build -o "$WORK/ward" ./cmd/ward
WARD="$WORK/ward"
FETCH="$WORK/fetch"

now() { date +%s.%N; }
port() { echo $((20000 + RANDOM % 30000)); }
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime+stime in clock ticks
rss() { awk '/^VmRSS/ { print $2 / 1024 }' "/proc/$1/status"; }
TCK=$(getconf CLK_TCK)
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; } # seconds since $1
# held SOCKET GID: seconds until the workload of group GID holds N+1 SVIDs.
held() {
  local t0
  t0=$(now)
  "$FETCH" -socket "unix://$1" -gid "$2" wait $((N + 1)) >&2
  since "$t0"
}
# measure_agent SIDE SERVER_PID SOCKET LOG CMD...: steps 2-4 on one side. Starts the
# agent (CMD, output to LOG; its pid in AGENT), then sets SIDE_start,
# SIDE_cpu (the server's, per SVID), SIDE_rss, SIDE_p50 and SIDE_p99.
measure_agent() {
  local side=$1 srv=$2 sock=$3 log=$4 c0 c1 t0 p50 p99
  shift 4
  c0=$(cpu "$srv")
  t0=$(now)
  "$@" >"$log" 2>&1 &
  AGENT=$!
  PIDS+=("$AGENT")
  "$FETCH" -socket "unix://$sock" -gid "$GID" wait $((N + 1)) >&2
  printf -v "${side}_start" '%s' "$(since "$t0")"
  c1=$(cpu "$srv")
  printf -v "${side}_cpu" '%s' "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / t / n * 1e6 }')"
  printf -v "${side}_rss" '%s' "$(rss "$AGENT")"
  read -r _ p50 _ p99 < <("$FETCH" -socket "unix://$sock" lat "$LAT")
  printf -v "${side}_p50" '%s' "$p50"
  printf -v "${side}_p99" '%s' "$p99"
}

# ---------------------------------------------------------------- ward
W="$WORK/ward-run"
mkdir -p "$W/data"
WP=$(port)
cat >"$W/ward.yaml" <<CFG
trust_domain: $TD
data_dir: $W/data
http_address: 127.0.0.1:0
log_level: warn
identity:
  node_api_address: 127.0.0.1:$WP
  key_type: ec-p256
  svid_ttl: 1h
CFG
"$WARD" server --config "$W/ward.yaml" >"$W/server.log" 2>&1 &
WSRV=$!
PIDS+=("$WSRV")
export WARD_ADDRESS="unix://$W/data/admin.sock" WARD_STATE_DIR="$W/state"
for _ in $(seq 200); do "$WARD" operator status >/dev/null 2>&1 && break; sleep 0.1; done
"$WARD" operator init --shares 2 --threshold 2 >"$W/init.out"
grep 'Unseal share' "$W/init.out" | sed 's/.*: //' | while read -r share; do echo "$share" | "$WARD" operator unseal >/dev/null; done
for _ in $(seq 200); do "$WARD" ca bundle -o "$W/bundle.pem" >/dev/null 2>&1 && break; sleep 0.1; done
parent=spiffe://$TD/ward/agent/node-1
{
  printf -- '---\nkind: Entry\nspiffe_id: spiffe://%s/probe\nparent_id: %s\nselectors: [unix:uid:0]\n' "$TD" "$parent"
  for i in $(seq 1 "$N"); do
    printf -- '---\nkind: Entry\nspiffe_id: spiffe://%s/w/%d\nparent_id: %s\nselectors: [unix:uid:0, unix:gid:%d]\n' "$TD" "$i" "$parent" "$GID"
  done
} >"$W/entries.yaml"
t0=$(now)
"$WARD" apply -f "$W/entries.yaml" >"$W/apply.out"
w_create=$(since "$t0")
"$WARD" token create --ttl 10m --agent-path node-1 -q >"$W/join-token"
cat >"$W/agent.yaml" <<CFG
trust_domain: $TD
server_address: 127.0.0.1:$WP
trust_bundle_path: $W/bundle.pem
join_token_file: $W/join-token
socket_path: $W/agent/agent.sock
data_dir: $W/agent-data
log_level: warn
policy_socket: none
CFG
measure_agent w "$WSRV" "$W/agent/agent.sock" "$W/agent.log" "$WARD" agent --config "$W/agent.yaml"
WAG=$AGENT
# 5. with the agent running: N more entries (gid GID2), from the last one
# created until the workload holds them.
for i in $(seq 1 "$N"); do
  printf -- '---\nkind: Entry\nspiffe_id: spiffe://%s/v/%d\nparent_id: %s\nselectors: [unix:uid:0, unix:gid:%d]\n' "$TD" "$i" "$parent" "$GID2"
done >"$W/more.yaml"
"$WARD" apply -f "$W/more.yaml" >"$W/more.out"
w_last=$(held "$W/agent/agent.sock" "$GID2")
kill "$WAG" "$WSRV"; wait "$WAG" "$WSRV" 2>/dev/null || true
PIDS=()
unset WARD_ADDRESS WARD_STATE_DIR

# ---------------------------------------------------------------- SPIRE
S="$WORK/spire-run"
mkdir -p "$S/data" "$S/agent-data"
SP=$(port)
cat >"$S/server.conf" <<CFG
server {
  bind_address = "127.0.0.1"
  bind_port = "$SP"
  socket_path = "$S/api.sock"
  trust_domain = "$TD"
  data_dir = "$S/data"
  log_level = "WARN"
  ca_key_type = "ec-p256"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$S/data/datastore.sqlite3"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
CFG
SS="$CACHE/spire-server"
"$SS" run -config "$S/server.conf" >"$S/server.log" 2>&1 &
SSRV=$!
PIDS+=("$SSRV")
for _ in $(seq 300); do "$SS" healthcheck -socketPath "$S/api.sock" >/dev/null 2>&1 && break; sleep 0.1; done
tok=$("$SS" token generate -socketPath "$S/api.sock" -ttl 600 | sed -n 's/^Token: //p')
sparent=spiffe://$TD/spire/agent/join_token/$tok
{
  printf '{"entries": [\n'
  printf '{"spiffe_id": "spiffe://%s/probe", "parent_id": "%s", "selectors": [{"type": "unix", "value": "uid:0"}], "x509_svid_ttl": 3600}' "$TD" "$sparent"
  for i in $(seq 1 "$N"); do
    printf ',\n{"spiffe_id": "spiffe://%s/w/%d", "parent_id": "%s", "selectors": [{"type": "unix", "value": "uid:0"}, {"type": "unix", "value": "gid:%d"}], "x509_svid_ttl": 3600}' "$TD" "$i" "$sparent" "$GID"
  done
  printf '\n]}\n'
} >"$S/entries.json"
t0=$(now)
"$SS" entry create -socketPath "$S/api.sock" -data "$S/entries.json" >"$S/create.out"
s_create=$(since "$t0")
created=$(grep -c '^Entry ID' "$S/create.out" || true)
[ "$created" -eq $((N + 1)) ] || { echo "spire-server created $created of $((N + 1)) entries:" >&2; tail -5 "$S/create.out" >&2; exit 1; }
cat >"$S/agent.conf" <<CFG
agent {
  data_dir = "$S/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "$SP"
  socket_path = "$S/agent/agent.sock"
  trust_domain = "$TD"
  insecure_bootstrap = true
  join_token = "$tok"
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
CFG
mkdir -p "$S/agent"
measure_agent s "$SSRV" "$S/agent/agent.sock" "$S/agent.log" "$CACHE/spire-agent" run -config "$S/agent.conf"
{
  printf '{"entries": [\n'
  for i in $(seq 1 "$N"); do
    [ "$i" -gt 1 ] && printf ',\n'
    printf '{"spiffe_id": "spiffe://%s/v/%d", "parent_id": "%s", "selectors": [{"type": "unix", "value": "uid:0"}, {"type": "unix", "value": "gid:%d"}], "x509_svid_ttl": 3600}' "$TD" "$i" "$sparent" "$GID2"
  done
  printf '\n]}\n'
} >"$S/more.json"
"$SS" entry create -socketPath "$S/api.sock" -data "$S/more.json" >"$S/more.out"
s_last=$(held "$S/agent/agent.sock" "$GID2")

printf '\n== ward vs SPIRE %s (%d entries, one run, %d cores shared) ==\n' "$VER" "$N" "$(nproc)"
printf '%-44s %12s %12s\n' "" "ward" "SPIRE"
printf '%-44s %12s %12s\n' "create $N entries in bulk (s)" "$w_create" "$s_create"
printf '%-44s %12s %12s\n' "agent start -> $N SVIDs held (s)" "$w_start" "$s_start"
printf '%-44s %12s %12s\n' "last of $N more entries -> SVIDs held (s)" "$w_last" "$s_last"
printf '%-44s %12.1f %12.1f\n' "agent RSS with $N SVIDs (MiB)" "$w_rss" "$s_rss"
printf '%-44s %12s %12s\n' "FetchX509SVID p50 (us)" "$w_p50" "$s_p50"
printf '%-44s %12s %12s\n' "FetchX509SVID p99 (us)" "$w_p99" "$s_p99"
printf '%-44s %12s %12s\n' "server CPU per SVID (us)" "$w_cpu" "$s_cpu"

ahead() { met "$(ratio "$1" "$2")" '>=' 1; }
summary "create $N entries in bulk" "apply ${w_create} s" "SPIRE entry create -data ${s_create} s" "$(ratio "$s_create" "$w_create")" "< 1 s, ahead" "$(awk -v w="$w_create" -v s="$s_create" 'BEGIN { print (w < 1 && w <= s) ? "yes" : "no" }')"
summary "agent start -> $N SVIDs" "${w_start} s" "SPIRE ${s_start} s" "$(ratio "$s_start" "$w_start")" "ahead of SPIRE" "$(ahead "$s_start" "$w_start")"
summary "last entry created -> $N SVIDs" "${w_last} s" "SPIRE ${s_last} s" "$(ratio "$s_last" "$w_last")" "ahead of SPIRE" "$(ahead "$s_last" "$w_last")"
summary "agent RSS, $N SVIDs" "$(printf '%.1f' "$w_rss") MiB" "SPIRE $(printf '%.1f' "$s_rss") MiB" "$(ratio "$s_rss" "$w_rss")" "ahead of SPIRE" "$(ahead "$s_rss" "$w_rss")"
summary "FetchX509SVID p50, reused client" "${w_p50} us" "SPIRE ${s_p50} us" "$(ratio "$s_p50" "$w_p50")" "ahead of SPIRE" "$(ahead "$s_p50" "$w_p50")"
summary "FetchX509SVID p99, reused client" "${w_p99} us" "SPIRE ${s_p99} us" "$(ratio "$s_p99" "$w_p99")" "ahead of SPIRE" "$(ahead "$s_p99" "$w_p99")"
summary "server CPU per SVID" "${w_cpu} us" "SPIRE ${s_cpu} us" "$(ratio "$s_cpu" "$w_cpu")" "ahead of SPIRE" "$(ahead "$s_cpu" "$w_cpu")"
