#!/usr/bin/env bash
# A/B of two upkeep builds side by side, with HAProxy on the same two nginx origins:
#
#   OLD_BIN=/tmp/old-target/release/upkeep bash benches/load/ab.sh [PATH]
#
# measures a change against the build before it. Build the old one from a worktree, e.g.
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \
#       cargo build --release -p upkeep-mio)
# NEW_BIN defaults to this checkout's build (cargo build --release -p upkeep-mio, in
# CARGO_TARGET_DIR when set). PATH is /small (100
# bytes, the default) or /64k (65,536 bytes). Each round runs wrk (-t1) for DURATION seconds on
# old, new and HAProxy in turn, after a 1 s warm-up, starting one further along each round (no
# target always runs first or last); CPU is utime + stime of each proxy process
# over the run (/proc/PID/stat) per request. It prints one line per round and target
# ("round target requests/s CPU-µs/request") and then the medians of the per-round ratios
# new/old, new/haproxy and old/haproxy with the rounds' own ratios in brackets: the machine is
# noisy, so only ratios from the same round mean anything.
#
# Knobs: ROUNDS (default 5), DURATION (s, default 5), CONNS (wrk -c, default 64), IO (epoll or
# uring: the workers' `io`, default epoll), OLD_ENV / NEW_ENV (VAR=value words for one side
# only, separated by spaces; no spaces inside a value), PORT_BASE (default 19600: origins +1/+2, HAProxy +10, old +40,
# new +50; they must be free). Needs nginx, haproxy, wrk and ss (`bash benches/load/run.sh`
# installs the first three). Everything runs on loopback and stops on exit.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$HERE/lib.sh"

URL_PATH=${1:-/small}
[[ $URL_PATH == /small || $URL_PATH == /64k ]] || { echo "ab.sh: PATH is /small or /64k" >&2; exit 2; }
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-5} CONNS=${CONNS:-64} IO=${IO:-epoll}
PORT_BASE=${PORT_BASE:-19600}
for n in ROUNDS DURATION CONNS PORT_BASE; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: $n is a positive whole number, not ${!n}" >&2; exit 2; }
done
((PORT_BASE + 50 <= 65535)) || { echo "ab.sh: PORT_BASE + 50 must be a port (<= 65535)" >&2; exit 2; }
for word in ${OLD_ENV:-} ${NEW_ENV:-}; do
    [[ $word == [A-Za-z_]*=* ]] || { echo "ab.sh: OLD_ENV/NEW_ENV hold VAR=value words, not $word" >&2; exit 2; }
done
for tool in nginx haproxy wrk ss; do
    command -v "$tool" >/dev/null || { echo "ab.sh: needs $tool (bash benches/load/run.sh installs nginx, haproxy, wrk)" >&2; exit 2; }
done
for p in $((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 10)) $((PORT_BASE + 40)) $((PORT_BASE + 50)); do
    if [[ -n $(ss -Hltn "sport = :$p") ]]; then
        echo "ab.sh: port $p is in use; pick another PORT_BASE" >&2
        exit 2
    fi
done
[[ $IO == epoll || $IO == uring ]] || { echo "ab.sh: IO is epoll or uring, not $IO" >&2; exit 2; }
: "${OLD_BIN:?ab.sh: set OLD_BIN to the upkeep binary to compare against}"
[[ -x $OLD_BIN ]] || { echo "ab.sh: OLD_BIN $OLD_BIN is not an executable" >&2; exit 2; }
if [[ -z ${NEW_BIN:-} ]]; then
    log "building upkeep (cargo build --release -p upkeep-mio)"
    (cd "$REPO" && cargo build --release -p upkeep-mio >&2)
    NEW_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/upkeep
fi
[[ $(realpath "$NEW_BIN") != $(realpath "$OLD_BIN") ]] || { echo "ab.sh: OLD_BIN and NEW_BIN are the same file" >&2; exit 2; }

TMP=$(mktemp -d /tmp/upkeep-ab.XXXXXX)
chmod 755 "$TMP" # nginx workers (user nobody) read the body file and write temp files here
PIDS=()
declare -A PID_OF
trap cleanup EXIT
SMALL_BODY=$(head -c 100 /dev/zero | tr '\0' 'x')
mkdir -p "$TMP/www"
head -c 65536 /dev/zero | tr '\0' 'x' >"$TMP/www/64k"
chmod -R a+rX "$TMP/www"
ORIGIN1=$((PORT_BASE + 1)) ORIGIN2=$((PORT_BASE + 2))
for o in 1 2; do
    mkdir -p "$TMP/origin$o" && chmod 777 "$TMP/origin$o"
    origin_conf "$TMP/origin$o" $((PORT_BASE + o)) \
        "    location = /64k { root $TMP/www; default_type application/octet-stream; }" >"$TMP/origin$o/nginx.conf"
    start "origin$o" nginx -e "$TMP/origin$o/error.log" -p "$TMP/origin$o" -c "$TMP/origin$o/nginx.conf"
done
wait_listening origin1 $ORIGIN1
wait_listening origin2 $ORIGIN2

declare -A PORT=([haproxy]=$((PORT_BASE + 10)) [old]=$((PORT_BASE + 40)) [new]=$((PORT_BASE + 50)))
haproxy_cfg "bind 127.0.0.1:${PORT[haproxy]}" "server s1 127.0.0.1:$ORIGIN1" "server s2 127.0.0.1:$ORIGIN2" >"$TMP/haproxy.cfg"
start haproxy haproxy -f "$TMP/haproxy.cfg"
for side in old new; do
    upkeep_conf "${PORT[$side]}" "io = \"$IO\"" >"$TMP/$side.toml"
done
read -r -a old_env <<<"${OLD_ENV:-}"
read -r -a new_env <<<"${NEW_ENV:-}"
start old env "${old_env[@]}" "$OLD_BIN" run --config "$TMP/old.toml"
start new env "${new_env[@]}" "$NEW_BIN" run --config "$TMP/new.toml"
for t in haproxy old new; do wait_listening "$t" "${PORT[$t]}"; done
log "A/B on $URL_PATH: $ROUNDS round(s) of ${DURATION}s, wrk -t1 -c$CONNS, io = $IO; old = $OLD_BIN, new = $NEW_BIN"

HZ=$(getconf CLK_TCK)
RESULTS=$TMP/rounds.txt
ORDER=(old new haproxy)
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        t=${ORDER[(i + round - 1) % 3]}
        url=http://127.0.0.1:${PORT[$t]}$URL_PATH
        timeout 30 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null || true
        before=$(cpu_ticks "${PID_OF[$t]}")
        rps=$(timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" | awk '/Requests\/sec/ { print $2 }') || true
        after=$(cpu_ticks "${PID_OF[$t]}")
        # A proxy that died took its CPU figures with it: nothing after that compares.
        kill -0 "${PID_OF[$t]}" 2>/dev/null || { echo "ab.sh: $t exited (see its log above)" >&2; cat "$TMP/$t.log" >&2; exit 1; }
        [[ -n $rps ]] || log "round $round: wrk measured nothing on $t"
        cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v q="${rps:-0}" -v d="$DURATION" \
            'BEGIN { if (q > 0 && t > 0) printf "%.2f", t / hz / (q * d) * 1e6; else print "-" }')
        echo "$round $t ${rps:--} $cpu" | tee -a "$RESULTS"
    done
done

# Medians of the per-round ratios (a round where either side measured nothing is left out), and
# each round's ratio.
awk '$3 != "-" && $4 != "-" { rps[$1, $2] = $3; cpu[$1, $2] = $4; if ($1 > last) last = $1 }
    END {
        split("new/old new/haproxy old/haproxy", pairs, " ")
        for (p = 1; p <= 3; p++) {
            split(pairs[p], ab, "/"); rs = ""; cs = ""
            for (r = 1; r <= last; r++) {
                if (!((r, ab[1]) in rps) || !((r, ab[2]) in rps)) continue
                rs = rs " " sprintf("%.17g", rps[r, ab[1]] / rps[r, ab[2]])
                cs = cs " " sprintf("%.17g", cpu[r, ab[1]] / cpu[r, ab[2]])
            }
            print pairs[p] "\t" rs "\t" cs
        }
    }' "$RESULTS" | while IFS=$'\t' read -r pair rs cs; do
    each() { tr ' ' '\n' | awk 'NF { printf "%s%.2f", (n++ ? ", " : ""), $1 }'; }
    printf '%-12s requests/s %s [%s]  CPU/request %s [%s]\n' "$pair" \
        "$(median %.3f <<<"$rs")" "$(each <<<"$rs")" "$(median %.3f <<<"$cs")" "$(each <<<"$cs")"
done
