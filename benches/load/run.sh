#!/usr/bin/env bash
# Side-by-side load comparison of upkeep against nginx and HAProxy, on loopback, in one command:
#
#   bash benches/load/run.sh            # full: 3 interleaved rounds of 5 s runs (~13 minutes)
#   bash benches/load/run.sh --quick    # 1 round of 2 s runs (~3 minutes)
#
# It installs what is missing (Debian's nginx, haproxy, wrk, curl), builds `upkeep` (release),
# starts two nginx origins (one worker each; /small = 100 bytes, /64k = a 65,536-byte file;
# stub_status to count the connections they accept) and the proxies, one worker each:
#
#   direct         wrk straight to origin 1 (the limit: no proxy hop)
#   nginx-nokeep   nginx, no upstream keepalive (HTTP/1.0 upstream, Connection: close)
#   nginx-keep     nginx, keepalive 16 + proxy_http_version 1.1 + proxy_set_header Connection ""
#                  (the reference every ratio is taken against)
#   haproxy-safe   HAProxy, http-reuse safe
#   upkeep         upkeep with its default settings (pooling on)
#   upkeep-nokeep  upkeep with pooling off (keepalive = 0)
#
# The proxies balance round-robin over both origins. Scenarios: keep-alive clients (wrk -c64),
# closing clients (wrk -c64 -H 'Connection: close': a new client connection per request), each
# with the small and the 64 KiB body, and fan-in (wrk -c1000, keep-alive, small body). Targets
# run interleaved inside each round (the starting target rotates every round), each measured
# run right after 1 s of the same load (unrecorded: pools refill after the idle time since the
# target's previous run), with medians over rounds and per-round ratios to nginx-keep.
#
# Per run: requests/s, p50/p99 latency (wrk --latency), the proxy's CPU µs per request
# (utime+stime of all its processes and threads, /proc/PID/stat), peak RSS (VmHWM summed over
# its processes, reset through /proc/PID/clear_refs before each run), upstream connections
# opened (the origins' stub_status "accepts" delta, minus our own status requests), and TIME_WAIT
# sockets with an origin port at either end (new during the run: a 4-tuple set difference; and
# all of them right after the run).
#
# Output: benches/load/results/{results.md,chart.svg,runs.csv,raw/} (--quick: results/quick/).
# Everything it starts it stops by PID (trap); all traffic stays on 127.0.0.1; every wrk run is
# bounded (-d, plus `timeout`).
#
# Knobs (environment): ROUNDS, DURATION (s), TARGETS, CASES ("scenario:body ..."), CONNS,
# FANIN_CONNS, WRK_THREADS, SETTLE (s of unrecorded load right before each measured run, default
# 1; 0 = off), PORT_BASE (default 19000: origins +1/+2, status +101/+102,
# proxies +81/+82/+83/+90/+91), PIN=1 (proxies on CPU 0, wrk and origins on CPU 1; default: no
# pinning), UPKEEP_BIN (skip the build), OUT (output directory), SKIP_ALLOC=1 (skip the
# allocation count).
set -euo pipefail

# The comment block above, without the marks.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2} WARMUP=1 OUT=${OUT:-$HERE/results/quick}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} WARMUP=2 OUT=${OUT:-$HERE/results}
fi
TARGETS=${TARGETS:-direct nginx-nokeep nginx-keep haproxy-safe upkeep upkeep-nokeep}
CASES=${CASES:-keepalive:small keepalive:64k close:small close:64k fanin:small}
CONNS=${CONNS:-64}
FANIN_CONNS=${FANIN_CONNS:-1000}
WRK_THREADS=${WRK_THREADS:-1}
PORT_BASE=${PORT_BASE:-19000}
PIN=${PIN:-0}
PAUSE=1
SETTLE=${SETTLE:-1}

ORIGIN1=$((PORT_BASE + 1)) ORIGIN2=$((PORT_BASE + 2))
STATUS1=$((PORT_BASE + 101)) STATUS2=$((PORT_BASE + 102))
declare -A PORT=(
    [direct]=$ORIGIN1
    [nginx-nokeep]=$((PORT_BASE + 81))
    [nginx-keep]=$((PORT_BASE + 82))
    [haproxy-safe]=$((PORT_BASE + 83))
    [upkeep]=$((PORT_BASE + 90))
    [upkeep-nokeep]=$((PORT_BASE + 91))
)
for t in $TARGETS; do
    [[ -n ${PORT[$t]:-} ]] || { echo "run.sh: unknown target $t" >&2; exit 2; }
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- what it needs -------------------------------------------------------------------------

install_missing() {
    local need=() sudo=""
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    ((${#need[@]})) || return 0
    ((EUID == 0)) || sudo=sudo
    log "installing ${need[*]} (apt-get)"
    $sudo apt-get update -qq
    local pkgs=() p
    for p in "${need[@]}"; do
        if [[ $p == nginx ]]; then
            # nginx-light where it exists (Debian 12), else the full package.
            if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
        else
            pkgs+=("$p")
        fi
    done
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    # The packages' own services (port 80 and haproxy's default config) are not ours to run:
    # stop the ones this install may have started.
    if [[ -d /run/systemd/system ]]; then
        for p in nginx haproxy; do
            [[ " ${need[*]} " == *" $p "* ]] && $sudo systemctl disable --now "$p" >/dev/null 2>&1 || true
        done
    fi
}

install_missing
for cmd in nginx haproxy wrk curl ss taskset; do
    command -v $cmd >/dev/null || { echo "run.sh: $cmd is missing" >&2; exit 1; }
done

# Ports must be free (other services or a previous run still going).
for p in $ORIGIN1 $ORIGIN2 $STATUS1 $STATUS2 "${PORT[@]}"; do
    if [[ -n $(ss -Hltn "sport = :$p") ]]; then
        echo "run.sh: port $p is in use; pick another PORT_BASE" >&2
        exit 1
    fi
done

# Enough descriptors for 1000 clients plus their upstream connections.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 2 * FANIN_CONNS + 200)); then
    log "warning: ulimit -n is $(ulimit -n); the fan-in scenario may run out of descriptors"
fi

# --- build -----------------------------------------------------------------------------------

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
cd "$REPO"
needs_upkeep=0
[[ " $TARGETS " == *" upkeep"* ]] && needs_upkeep=1
if ((needs_upkeep)) && [[ -z ${UPKEEP_BIN:-} ]]; then
    log "building upkeep (cargo build --release -p upkeep-mio)"
    cargo build --release -q -p upkeep-mio
    UPKEEP_BIN=$CARGO_TARGET_DIR/release/upkeep
fi
log "building the report (cargo build --release -p upkeep-benches --bin report)"
cargo build --release -q -p upkeep-benches --bin report
REPORT_BIN=$CARGO_TARGET_DIR/release/report

ALLOC_LINE="not measured (SKIP_ALLOC=1)"
if [[ -z ${SKIP_ALLOC:-} ]]; then
    log "counting allocations per request in the core (cargo bench -p upkeep-benches --bench alloc)"
    alloc_out=$(cargo bench -q -p upkeep-benches --bench alloc 2>&1) || true
    ALLOC_LINE=$(grep -m1 'allocations per request' <<<"$alloc_out" || echo "failed: $alloc_out")
fi

# --- processes -------------------------------------------------------------------------------

TMP=$(mktemp -d /tmp/upkeep-load.XXXXXX)
chmod 755 "$TMP" # nginx workers (user nobody) read the 64k file and write temp files here
PIDS=()
declare -A PID_OF

cleanup() {
    local pid i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PROXY_CPU=() OTHER_CPU=()
if ((PIN)); then
    PROXY_CPU=(taskset -c 0) OTHER_CPU=(taskset -c 1)
fi

# start NAME CMD...: runs CMD in the background, logs in $TMP/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
}

wait_listening() {
    local name=$1 port=$2
    for _ in $(seq 100); do
        [[ -n $(ss -Hltn "sport = :$port") ]] && return 0
        if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
            echo "run.sh: $name exited at startup:" >&2
            cat "$TMP/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "run.sh: $name is not listening on $port after 10 s" >&2
    cat "$TMP/$name.log" >&2
    exit 1
}

nginx_common() { # prefix
    cat <<EOF
daemon off; worker_processes 1; worker_rlimit_nofile 20000;
user nobody nogroup;
pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 8192; }
EOF
}

nginx_temp_paths() { # prefix
    cat <<EOF
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
EOF
}

# Origins.
mkdir -p "$TMP/www"
head -c 65536 /dev/zero | tr '\0' 'x' >"$TMP/www/64k"
chmod -R a+rX "$TMP/www"
SMALL_BODY=$(printf 'x%.0s' $(seq 100))
for i in 1 2; do
    port=$((PORT_BASE + i)) status=$((PORT_BASE + 100 + i)) dir=$TMP/origin$i
    mkdir -p "$dir" && chmod 777 "$dir"
    cat >"$dir/nginx.conf" <<EOF
$(nginx_common "$dir")
http {
$(nginx_temp_paths "$dir")
  access_log off; sendfile on; tcp_nopush on;
  keepalive_requests 1000000; keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location = /small { default_type text/plain; return 200 "$SMALL_BODY"; }
    location = /64k   { root $TMP/www; default_type application/octet-stream; }
  }
  server { listen 127.0.0.1:$status; location / { stub_status; } }
}
EOF
    start "origin$i" "${OTHER_CPU[@]}" nginx -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
done
wait_listening origin1 $ORIGIN1
wait_listening origin2 $ORIGIN2

want() { [[ " $TARGETS " == *" $1 "* ]]; }

nginx_proxy() { # name keepalive(0/1)
    local name=$1 keep=$2 dir=$TMP/$1 upstream_keep="" location="proxy_pass http://up;"
    if ((keep)); then
        upstream_keep="keepalive 16;"
        location='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
    fi
    mkdir -p "$dir" && chmod 777 "$dir"
    cat >"$dir/nginx.conf" <<EOF
$(nginx_common "$dir")
http {
$(nginx_temp_paths "$dir")
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 75s;   # client side: no per-connection cap
  upstream up {
    server 127.0.0.1:$ORIGIN1;
    server 127.0.0.1:$ORIGIN2;
    $upstream_keep
  }
  server {
    listen 127.0.0.1:${PORT[$name]} backlog=4096;
    location / { $location }
  }
}
EOF
    start "$name" "${PROXY_CPU[@]}" nginx -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
}

want nginx-nokeep && nginx_proxy nginx-nokeep 0
want nginx-keep && nginx_proxy nginx-keep 1

if want haproxy-safe; then
    cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse safe
frontend fe
  bind 127.0.0.1:${PORT[haproxy-safe]}
  default_backend be
backend be
  balance roundrobin
  server s1 127.0.0.1:$ORIGIN1
  server s2 127.0.0.1:$ORIGIN2
EOF
    start haproxy-safe "${PROXY_CPU[@]}" haproxy -db -f "$TMP/haproxy.cfg"
fi

upkeep_proxy() { # name keepalive-line
    cat >"$TMP/$1.toml" <<EOF
workers = 1

[[listen]]
addr = "127.0.0.1:${PORT[$1]}"

[[upstream]]
name = "origins"
servers = ["127.0.0.1:$ORIGIN1", "127.0.0.1:$ORIGIN2"]
$2

[limits]
# Like the nginx configs above (keepalive_requests 1000000) and HAProxy: wrk's connections
# are not closed every 1000 requests. The upstream side keeps its defaults.
client_keepalive_requests = 1000000
EOF
    start "$1" "${PROXY_CPU[@]}" "$UPKEEP_BIN" run --config "$TMP/$1.toml"
}
want upkeep && upkeep_proxy upkeep ""
want upkeep-nokeep && upkeep_proxy upkeep-nokeep "keepalive = 0   # pooling off"

for t in $TARGETS; do
    [[ $t == direct ]] || wait_listening "$t" "${PORT[$t]}"
done

# --- accounting ------------------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# The target's processes: the one we started and its children (nginx's worker).
procs_of() {
    local pid=${PID_OF[$1]}
    echo "$pid" $(pgrep -P "$pid" || true)
}

cpu_ticks() { # pids... → utime+stime (fields 14, 15), every thread included
    local total=0 p
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

reset_peak_rss() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_rss_kb() {
    local total=0 p
    for p in "$@"; do
        total=$((total + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

machine_ticks() { # → "busy idle": user+nice+system and idle+iowait over all CPUs (/proc/stat)
    awk '/^cpu / {print $2 + $3 + $4, $5 + $6; exit}' /proc/stat
}

# CPU ticks of the shell's reaped children (wrk, through timeout), from `times`' second line,
# into CHILD_TICKS. Call it directly (not in $(...) or a pipeline): a subshell has its own
# children.
children_ticks() {
    times >"$TMP/times"
    CHILD_TICKS=$(awk -v hz="$CLK_TCK" 'function sec(t, m) {
        m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return m * 60 + t
    } NR == 2 { printf "%d\n", (sec($1) + sec($2)) * hz + 0.5 }' "$TMP/times")
}

accepts() { # status port → stub_status "accepts"
    local n
    n=$(curl -s --max-time 5 "http://127.0.0.1:$1/" | awk 'NR == 3 {print $1}')
    echo "${n:-0}"
}

time_wait() { # TIME_WAIT 4-tuples with an origin port at either end, sorted
    ss -Htan state time-wait |
        awk -v a=":$ORIGIN1" -v b=":$ORIGIN2" '{
            l = $(NF - 1); r = $NF
            if (l ~ a "$" || l ~ b "$" || r ~ a "$" || r ~ b "$") print l, r
        }' | sort
}

run_wrk() { # out-file port path conns duration scenario
    local args=(-t"$WRK_THREADS" -c"$4" -d"$5s" --latency --timeout 5s)
    [[ $6 == close ]] && args+=(-H 'Connection: close')
    timeout -k 5 $(($5 + 30)) "${OTHER_CPU[@]}" wrk "${args[@]}" "http://127.0.0.1:$2/$3" >"$1" 2>&1 || true
}

# --- runs ------------------------------------------------------------------------------------

rm -rf "$OUT/raw" "$OUT/runs.csv" "$OUT/note.md"
mkdir -p "$OUT/raw"
CSV=$OUT/runs.csv
echo "round,scenario,body,target,conns,wrk_file,cpu_ticks,clk_tck,rss_kb,upstream_conns,tw_new,tw_after,duration_s,backend_ticks,wrk_ticks,machine_busy_ticks,machine_idle_ticks" >"$CSV"

read -r -a TARGET_LIST <<<"$TARGETS"
n_cases=$(wc -w <<<"$CASES")
total_runs=$((ROUNDS * n_cases * ${#TARGET_LIST[@]}))
log "$total_runs runs of ${DURATION}s (${ROUNDS} round(s)), est. $((total_runs * (DURATION + SETTLE + PAUSE + 1) / 60 + 1)) min"

log "warm-up: ${WARMUP}s per target (not recorded)"
for t in "${TARGET_LIST[@]}"; do
    run_wrk "$TMP/warmup.txt" "${PORT[$t]}" small "$CONNS" "$WARMUP" keepalive
done

read -r -a ORIGIN_PROCS <<<"$(procs_of origin1) $(procs_of origin2)"
START=$SECONDS
done_runs=0
for ((round = 0; round < ROUNDS; round++)); do
    for case in $CASES; do
        scenario=${case%%:*} body=${case#*:}
        conns=$CONNS
        [[ $scenario == fanin ]] && conns=$FANIN_CONNS
        n=${#TARGET_LIST[@]}
        for ((i = 0; i < n; i++)); do
            t=${TARGET_LIST[(i + round) % n]}
            procs=()
            [[ $t == direct ]] || read -r -a procs <<<"$(procs_of "$t")"
            file=raw/r$round-$scenario-$body-$t.txt
            # A short unrecorded run first, so the measured one starts in steady state (pools
            # filled again after the idle time since this target's previous run).
            ((SETTLE > 0)) && run_wrk "$TMP/settle.txt" "${PORT[$t]}" "$body" "$conns" "$SETTLE" "$scenario"
            reset_peak_rss "${procs[@]}"
            time_wait >"$TMP/tw.before"
            a1=$(accepts $STATUS1) a2=$(accepts $STATUS2)
            c0=$(cpu_ticks "${procs[@]}") o0=$(cpu_ticks "${ORIGIN_PROCS[@]}")
            children_ticks
            w0=$CHILD_TICKS
            read -r busy0 idle0 < <(machine_ticks)
            run_wrk "$OUT/$file" "${PORT[$t]}" "$body" "$conns" "$DURATION" "$scenario"
            read -r busy1 idle1 < <(machine_ticks)
            c1=$(cpu_ticks "${procs[@]}") o1=$(cpu_ticks "${ORIGIN_PROCS[@]}")
            children_ticks
            w1=$CHILD_TICKS
            b1=$(accepts $STATUS1) b2=$(accepts $STATUS2)
            time_wait >"$TMP/tw.after"
            # Each origin's delta includes our second status request's own connection.
            upstream=$((b1 - a1 - 1 + b2 - a2 - 1))
            tw_new=$(comm -13 "$TMP/tw.before" "$TMP/tw.after" | wc -l)
            tw_after=$(wc -l <"$TMP/tw.after")
            if [[ $t == direct ]]; then
                cpu=- rss=-
            else
                cpu=$((c1 - c0)) rss=$(peak_rss_kb "${procs[@]}")
            fi
            echo "$round,$scenario,$body,$t,$conns,$file,$cpu,$CLK_TCK,$rss,$upstream,$tw_new,$tw_after,$DURATION,$((o1 - o0)),$((w1 - w0)),$((busy1 - busy0)),$((idle1 - idle0))" >>"$CSV"
            done_runs=$((done_runs + 1))
            rps=$(awk '/^Requests\/sec/ {print $2}' "$OUT/$file")
            log "[$done_runs/$total_runs] round $round $scenario/$body $t: ${rps:-no result} req/s, upstream conns $upstream, cpu ticks $cpu"
            if [[ -z $rps ]]; then sed 's/^/    wrk: /' "$OUT/$file" >&2; fi
            for p in "${procs[@]}"; do
                kill -0 "$p" 2>/dev/null || { echo "run.sh: $t (pid $p) died" >&2; exit 1; }
            done
            sleep $PAUSE
        done
    done
done
log "runs done in $((SECONDS - START)) s"

# --- report ----------------------------------------------------------------------------------

pin_note="nothing pinned (the scheduler spreads wrk, the origins and the proxy over the cores)"
((PIN)) && pin_note="proxies pinned to CPU 0, wrk and the origins to CPU 1 (taskset)"
NOTE="Command: \`bash benches/load/run.sh$( ((QUICK)) && echo ' --quick')\` ($(date -u +%Y-%m-%d), \
$ROUNDS round(s) of ${DURATION} s per run, wrk -t$WRK_THREADS, $CONNS clients, fan-in $FANIN_CONNS clients, \
$pin_note).

Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r); \
$(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'); \
load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg). \
upkeep: $([[ -n ${UPKEEP_BIN:-} ]] && echo "built from $(git -C "$REPO" rev-parse --short HEAD), last change to core/ or runtime-mio/: $(git -C "$REPO" log -1 --format='%h %s' -- core runtime-mio | cut -c1-80)" || echo 'not run').

Core allocations (steady state, \`cargo bench -p upkeep-benches --bench alloc\`): $ALLOC_LINE.

Columns: proxy CPU = utime+stime of the proxy's processes during the run ÷ requests; peak RSS = \
VmHWM summed over its processes; upstream conns = connections the origins accepted (stub_status); \
new TIME_WAIT = TIME_WAIT sockets with an origin port at either end that appeared during the run \
(TIME_WAIT after = all of them, including earlier runs'). For \`direct\` the \"upstream\" \
connections are wrk's own."
printf '%s\n' "$NOTE" >"$OUT/note.md"
"$REPORT_BIN" "$CSV" "$OUT"
log "wrote $OUT/results.md and $OUT/chart.svg"
