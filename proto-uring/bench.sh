#!/usr/bin/env bash
# The io_uring prototype against the mio runtime and HAProxy, side by side in one session
# (issue 14, item 5): 64 keep-alive clients, 100-byte responses, two nginx origins.
#
#   bash proto-uring/bench.sh            # 3 interleaved rounds of 5 s per target (~1.5 min)
#
# Targets (one worker / one thread each, round-robin over both origins):
#   upkeep       target/release/upkeep (the mio runtime), workers = 1,
#                client_keepalive_requests = 1000000 (the load bench's config, without admin)
#   proto-uring  proto-uring/target/release/proto-uring LISTEN ORIGIN1 ORIGIN2 (the same TOML,
#                built from its arguments)
#   haproxy      nbthread 1, http-reuse safe (benches/load/run.sh's haproxy-safe)
#
# Origins, HAProxy and upkeep configurations are those of benches/load/run.sh (the /small
# location only). Before the rounds: one curl per target, checked for status 200 and the exact
# 100-byte body, and 1 s of unrecorded load per target. Each round runs every target (the
# starting one rotates), each measured run right after SETTLE s of unrecorded load. Per run:
# wrk -t1 -c64 -d5s --latency; req/s; the proxy's CPU µs per request, user and system apart
# (/proc/PID/stat fields 14 and 15, CLK_TCK ticks); non-2xx and socket errors from wrk.
#
# Output: proto-uring/results/{summary.md,runs.csv,raw/}. Every process it starts is stopped by
# PID (trap). Only 127.0.0.1.
#
# Knobs: ROUNDS (3), DURATION (5), SETTLE (1), CONNS (64), PORT_BASE (19500: origins +1/+2,
# haproxy +83, upkeep +90, proto-uring +95), TARGETS, OUT, UPKEEP_BIN / PROTO_BIN (skip builds),
# PIN=1 (proxies on CPU 0, wrk and origins on CPU 1).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} SETTLE=${SETTLE:-1} CONNS=${CONNS:-64}
PORT_BASE=${PORT_BASE:-19500}
TARGETS=${TARGETS:-upkeep proto-uring haproxy}
OUT=${OUT:-$HERE/results}
PIN=${PIN:-0}
ORIGIN1=$((PORT_BASE + 1)) ORIGIN2=$((PORT_BASE + 2))
declare -A PORT=([haproxy]=$((PORT_BASE + 83)) [upkeep]=$((PORT_BASE + 90)) [proto-uring]=$((PORT_BASE + 95)))

# log, cleanup, start, wait_listening, origin_conf, haproxy_cfg, cpu_split, cpu_ticks: the load
# comparison's own.
source "$REPO/benches/load/lib.sh"

need=()
for c in nginx haproxy wrk curl; do command -v $c >/dev/null || need+=($c); done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for p in $ORIGIN1 $ORIGIN2 "${PORT[@]}"; do
    [[ -z $(ss -Hltn "sport = :$p") ]] || { echo "bench.sh: port $p in use; set PORT_BASE" >&2; exit 1; }
done
ulimit -n 20000 2>/dev/null || true

if [[ -z ${UPKEEP_BIN:-} ]]; then
    log "cargo build --release -p upkeep-mio (in $REPO)"
    (cd "$REPO" && cargo build --release -q -p upkeep-mio)
    UPKEEP_BIN=$REPO/target/release/upkeep
fi
if [[ -z ${PROTO_BIN:-} ]]; then
    log "cargo build --release (in $HERE)"
    (cd "$HERE" && cargo build --release -q)
    PROTO_BIN=$HERE/target/release/proto-uring
fi

TMP=$(mktemp -d /tmp/proto-uring-bench.XXXXXX)
chmod 755 "$TMP"
PIDS=()
declare -A PID_OF
trap cleanup EXIT
trap 'exit 130' INT TERM

PROXY_CPU=() OTHER_CPU=()
((PIN)) && PROXY_CPU=(taskset -c 0) OTHER_CPU=(taskset -c 1)


# --- origins (benches/load/run.sh's, /small only) --------------------------------------------
SMALL_BODY=$(printf 'x%.0s' $(seq 100))
for i in 1 2; do
    port=$((PORT_BASE + i)) dir=$TMP/origin$i
    mkdir -p "$dir" && chmod 777 "$dir"
    origin_conf "$dir" "$port" >"$dir/nginx.conf"
    start origin$i "${OTHER_CPU[@]}" nginx -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
done
wait_listening origin1 $ORIGIN1
wait_listening origin2 $ORIGIN2

# --- proxies ---------------------------------------------------------------------------------
want() { [[ " $TARGETS " == *" $1 "* ]]; }
if want haproxy; then
    haproxy_cfg "bind 127.0.0.1:${PORT[haproxy]}" "server s1 127.0.0.1:$ORIGIN1" \
        "server s2 127.0.0.1:$ORIGIN2" >"$TMP/haproxy.cfg"
    start haproxy "${PROXY_CPU[@]}" haproxy -db -f "$TMP/haproxy.cfg"
fi
if want upkeep; then
    cat >"$TMP/upkeep.toml" <<EOF
workers = 1

[[listen]]
addr = "127.0.0.1:${PORT[upkeep]}"

[[upstream]]
name = "origins"
servers = ["127.0.0.1:$ORIGIN1", "127.0.0.1:$ORIGIN2"]

[limits]
client_keepalive_requests = 1000000
EOF
    start upkeep "${PROXY_CPU[@]}" "$UPKEEP_BIN" run --config "$TMP/upkeep.toml"
fi
if want proto-uring; then
    start proto-uring "${PROXY_CPU[@]}" "$PROTO_BIN" "127.0.0.1:${PORT[proto-uring]}" \
        "127.0.0.1:$ORIGIN1" "127.0.0.1:$ORIGIN2"
fi
read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do wait_listening "$t" "${PORT[$t]}"; done

mkdir -p "$OUT/raw"
rm -f "$OUT"/raw/*.txt
SUMMARY_CHECKS=$OUT/checks.txt
: >"$SUMMARY_CHECKS"

# --- correctness: one request through each ---------------------------------------------------
for t in "${TARGET_LIST[@]}"; do
    code=$(curl -s -o "$TMP/body.$t" -w '%{http_code}' --max-time 5 "http://127.0.0.1:${PORT[$t]}/small" || true)
    body=$(cat "$TMP/body.$t" 2>/dev/null || true)
    if [[ $code == 200 && $body == "$SMALL_BODY" ]]; then
        echo "$t: curl /small -> 200, ${#body}-byte body, identical to the origin's: ok" >>"$SUMMARY_CHECKS"
    else
        echo "$t: curl /small -> $code, ${#body}-byte body: WRONG" >>"$SUMMARY_CHECKS"
    fi
done
cat "$SUMMARY_CHECKS" >&2

# --- accounting ------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# CPU ticks of the shell's reaped children (wrk, through timeout), from `times` (second line),
# into CHILD_TICKS; call directly, not in $(...).
children_ticks() {
    times >"$TMP/times"
    CHILD_TICKS=$(awk -v hz="$CLK_TCK" 'function sec(t, m) {
        m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return m * 60 + t
    } NR == 2 { printf "%d\n", (sec($1) + sec($2)) * hz + 0.5 }' "$TMP/times")
}
run_wrk() { # out url duration
    timeout -k 5 $(($3 + 30)) "${OTHER_CPU[@]}" wrk -t1 -c"$CONNS" -d"$3s" --latency --timeout 5s "$2/small" >"$1" 2>&1 || true
}

log "warm-up: 1 s per target"
for t in "${TARGET_LIST[@]}"; do run_wrk "$TMP/warm.txt" "http://127.0.0.1:${PORT[$t]}" 1; done

CSV=$OUT/runs.csv
echo "round,target,requests,duration_s,rps,cpu_user_ticks,cpu_sys_ticks,clk_tck,non2xx,socket_errors,p50,p99,loadavg,origin_ticks,wrk_ticks" >"$CSV"
ORIGIN_PROCS=(${PID_OF[origin1]} ${PID_OF[origin2]} $(pgrep -P "${PID_OF[origin1]}" || true) $(pgrep -P "${PID_OF[origin2]}" || true))
n=${#TARGET_LIST[@]}
for ((round = 0; round < ROUNDS; round++)); do
    for ((i = 0; i < n; i++)); do
        t=${TARGET_LIST[(i + round) % n]}
        url=http://127.0.0.1:${PORT[$t]} pid=${PID_OF[$t]}
        ((SETTLE > 0)) && run_wrk "$TMP/settle.txt" "$url" "$SETTLE"
        load=$(cut -d' ' -f1 /proc/loadavg)
        read -r u0 s0 <<<"$(cpu_split "$pid")"
        o0=$(cpu_ticks "${ORIGIN_PROCS[@]}")
        children_ticks
        w0=$CHILD_TICKS
        file=$OUT/raw/r$round-$t.txt
        run_wrk "$file" "$url" "$DURATION"
        read -r u1 s1 <<<"$(cpu_split "$pid")"
        o1=$(cpu_ticks "${ORIGIN_PROCS[@]}")
        children_ticks
        w1=$CHILD_TICKS
        # "N requests in 5.00s, ..."
        read -r reqs dur < <(awk '/requests in/ { d = $4; sub(/s,?$/, "", d); print $1, d }' "$file")
        rps=$(awk '/^Requests\/sec/ { print $2 }' "$file")
        non2xx=$(awk '/Non-2xx/ { print $NF }' "$file")
        sockerr=$(awk '/Socket errors/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$file")
        p50=$(awk '$1 == "50%" { print $2 }' "$file")
        p99=$(awk '$1 == "99%" { print $2 }' "$file")
        echo "$round,$t,${reqs:-0},${dur:-0},${rps:-0},$((u1 - u0)),$((s1 - s0)),$CLK_TCK,${non2xx:-0},${sockerr:-0},$p50,$p99,$load,$((o1 - o0)),$((w1 - w0))" >>"$CSV"
        log "round $round $t: ${rps:-?} req/s, cpu ticks user $((u1 - u0)) sys $((s1 - s0)), non-2xx ${non2xx:-0}, socket errors ${sockerr:-0}"
    done
done

python3 "$HERE/summarize.py" "$CSV" "$SUMMARY_CHECKS" >"$OUT/summary.md"
cat "$OUT/summary.md"
