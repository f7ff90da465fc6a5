#!/usr/bin/env bash
# Side-by-side load comparison of upkeep against nginx and HAProxy, on loopback, in one command:
#
#   bash benches/load/run.sh            # full: 3 interleaved rounds of 5 s runs (~13 minutes)
#   bash benches/load/run.sh --quick    # 1 round of 2 s runs (~3 minutes)
#   bash benches/load/run.sh --memory   # RSS per idle client / pooled connection (memory.sh)
#   bash benches/load/run.sh --open-loop  # fixed-rate latency at 50/80/95 % of direct's peak
#                                         # (open_loop.sh; oha; direct, upkeep, HAProxy, nginx;
#                                         # OL_BASE=slowest: of the slowest target's peak)
#
# It installs what is missing (Debian's nginx, haproxy, wrk, curl), builds `upkeep` (release),
# starts two nginx origins (one worker each; /small = 100 bytes, /64k = a 65,536-byte file,
# /1m = a 1,048,576-byte file; stub_status to count the connections they accept) and the
# proxies, one worker each:
#
#   direct         wrk straight to origin 1 (the limit: no proxy hop)
#   nginx-nokeep   nginx, no upstream keepalive (HTTP/1.0 upstream, Connection: close)
#   nginx-keep     nginx, keepalive 16 + proxy_http_version 1.1 + proxy_set_header Connection ""
#                  (the reference every ratio is taken against)
#   haproxy-safe   HAProxy, http-reuse safe
#   upkeep         upkeep with its default settings (pooling on)
#   upkeep-nokeep  upkeep with pooling off (keepalive = 0)
#   upkeep-copy    upkeep with splice_min = 0 ([limits]: every body copied, no splice(2))
#   upkeep-uring   upkeep with io = "uring" (io_uring workers; plain cases only, no TLS)
#   upkeep-uring-copy  upkeep-uring with splice_min = 0 (io_uring, every body copied)
#   haproxy-splice haproxy-safe plus `option splice-auto` (defaults section; maxpipes 1024;
#                  HAPROXY_SPLICE replaces the option line, e.g. "option splice-response")
#
# upkeep-copy and haproxy-splice are not in the default TARGETS: they are the splice comparison
# (upkeep splices plain bodies of >= splice_min bytes, default 32k, socket -> pipe -> socket;
# HAProxy only with a splice option), best seen with the 1 MiB body, e.g.
#
#   TARGETS="direct upkeep upkeep-copy haproxy-safe haproxy-splice" \
#       CASES="keepalive:64k keepalive:1m close:1m" bash benches/load/run.sh
#
# (of a 64k body upkeep splices what its 16 KiB head read leaves, ~48 KiB; the spliced KiB/req
# column shows it). HAProxy's splice-auto
# splices only when its heuristics (fast-streaming connections) say so: with HAProxy 2.6.12 on
# loopback it opened no pipe and made no splice(2) call in keepalive:1m check runs (its CPU per
# request stayed haproxy-safe's), while HAPROXY_SPLICE="option splice-response" (splice every
# response body) did splice. nginx has no
# splice for proxied bodies; its proxies buffer a 1 MiB response partly through temp files
# (proxy_buffering on, the default), which is part of what a 1m case measures for them.
#
# The proxies balance round-robin over both origins. Scenarios: keep-alive clients (wrk -c64),
# closing clients (wrk -c64 -H 'Connection: close': a new client connection per request), each
# with the small and the 64 KiB body (CASES may also name 1m), and fan-in (wrk -c1000,
# keep-alive, small body). TLS scenarios (issue 12; not in the default CASES, select them with
# CASES, e.g. CASES="tls-keepalive:small tls-close:small tls-upstream:small"):
#
#   tls-keepalive  wrk over https (keep-alive) to each proxy's TLS listener (nginx `listen ssl`,
#                  HAProxy `bind ssl crt`, upkeep `[[listen]] tls`); plain HTTP to the origins
#   tls-close      the same with closing clients: a TLS handshake per request on the client side
#   tls-upstream   plain wrk clients; the proxies talk TLS to the origins' TLS listeners and
#                  verify them against the run's CA (nginx `proxy_pass https://` +
#                  proxy_ssl_session_reuse + the target's keepalive, HAProxy `server ssl verify
#                  required` + http-reuse safe, upkeep `[[upstream]] tls = { ca, sni }`)
#
# Each TLS scenario runs its own proxy processes (NAME-tls, NAME-tlsup) on ports +100 / +200 of
# the target's port; `direct` is wrk over https to origin 1's TLS port (tls-keepalive/close) or
# plain to origin 1 (tls-upstream: the no-proxy, no-TLS limit). A self-signed CA and an ECDSA
# P-256 leaf for localhost/127.0.0.1 are made once per run with openssl in the temp dir. Upstream
# TLS handshakes are counted at the origins (their TLS server logs `$ssl_session_reused` for the
# first request of each connection: full vs resumed), the same way for every proxy, and for
# upkeep also from its admin /metrics (upkeep_upstream_tls_handshakes_total), as a cross-check.
# With TLS cases the run also writes tls.md (req/s and CPU per request as ratios to nginx-keep
# and haproxy-safe, handshakes per 100k requests) and tls-handshakes.csv; a run of TLS cases
# only writes to results/tls/ (--quick: results/quick/tls/) unless OUT says otherwise. Targets
# run interleaved inside each round (the starting target rotates every round), each measured
# run right after 1 s of the same load (unrecorded: pools refill after the idle time since the
# target's previous run), with medians over rounds and per-round ratios to nginx-keep.
#
# Per run: requests/s, p50/p99 latency (wrk --latency), the proxy's CPU µs per request
# (utime+stime of all its processes and threads, /proc/PID/stat fields 14 and 15; also each
# alone: user and system µs per request), peak RSS (VmHWM summed over its processes, reset
# through /proc/PID/clear_refs before each run), upstream connections opened (the origins'
# stub_status "accepts" delta, minus our own status requests), TIME_WAIT sockets with an origin
# port at either end (new during the run: a 4-tuple set difference; and all of them right after
# the run), and for upkeep targets the bytes it spliced (the delta of
# upkeep_spliced_bytes_total on its admin listener, scraped right before and after the run).
#
# Output: benches/load/results/{results.md,chart.svg,runs.csv,raw/} (--quick: results/quick/).
# Everything it starts it stops by PID (trap); all traffic stays on 127.0.0.1; every wrk run is
# bounded (-d, plus `timeout`).
#
# Knobs (environment): ROUNDS, DURATION (s), TARGETS, CASES ("scenario:body ..."), CONNS,
# FANIN_CONNS, WRK_THREADS, SETTLE (s of unrecorded load right before each measured run, default
# 1; 0 = off), PORT_BASE (default 19000: origins +1/+2, status +101/+102, proxies
# nginx-nokeep +81, nginx-keep +82, haproxy-safe +83, haproxy-splice +84, upkeep +90,
# upkeep-nokeep +91, upkeep-copy +92, upkeep-uring +93, upkeep-uring-copy +94, upkeep admin = the proxy's port +50; TLS: origins +3/+4,
# proxies' TLS variants +100/+200, upkeep admin +150/+250), PIN=1 (proxies on CPU 0, wrk and
# origins on CPU 1; default: no pinning), HAPROXY_SPLICE (haproxy-splice's option line, default
# "option splice-auto"), UPKEEP_BIN (skip the build), OUT (output directory), SKIP_ALLOC=1 (skip
# the allocation count).
set -euo pipefail

# The comment block above, without the marks.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

QUICK=0 OPEN_LOOP=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --memory) exec bash "$(dirname "${BASH_SOURCE[0]}")/memory.sh" ;;
        --open-loop) OPEN_LOOP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# log, cleanup, start, wait_listening, nginx_common, nginx_temp_paths, origin_conf, haproxy_cfg,
# cpu_split, cpu_ticks
source "$HERE/lib.sh"
((OPEN_LOOP)) && CASES=${CASES:-keepalive:small} SKIP_ALLOC=${SKIP_ALLOC:-1}
DEFAULT_CASES="keepalive:small keepalive:64k close:small close:64k fanin:small"
CASES=${CASES:-$DEFAULT_CASES}
# Which kinds of TLS scenario were asked for (each needs its own proxy processes).
TLS_TERM=0 TLS_UP=0 TLS_ONLY=1
for case in $CASES; do
    case ${case%%:*} in
        tls-keepalive | tls-close) TLS_TERM=1 ;;
        tls-upstream) TLS_UP=1 ;;
        *) TLS_ONLY=0 ;;
    esac
done
TLS_ANY=$((TLS_TERM || TLS_UP))
if ((TLS_ANY)) && [[ " ${TARGETS:-} " == *" upkeep-uring"* ]]; then
    echo "run.sh: upkeep-uring has no TLS (io = \"uring\" refuses it): leave the tls cases out" >&2
    exit 2
fi
# A TLS-only run does not overwrite the plain-HTTP results.
SUB=""
((TLS_ANY && TLS_ONLY)) && SUB=/tls
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2} WARMUP=1 OUT=${OUT:-$HERE/results/quick$SUB}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} WARMUP=2 OUT=${OUT:-$HERE/results$SUB}
fi
if ((OPEN_LOOP)); then
    TARGETS=${TARGETS:-direct upkeep haproxy-safe nginx-keep}
fi
DEFAULT_TARGETS="direct nginx-nokeep nginx-keep haproxy-safe upkeep upkeep-nokeep"
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
CONNS=${CONNS:-64}
FANIN_CONNS=${FANIN_CONNS:-1000}
WRK_THREADS=${WRK_THREADS:-1}
PORT_BASE=${PORT_BASE:-19000}
PIN=${PIN:-0}
HAPROXY_SPLICE=${HAPROXY_SPLICE:-option splice-auto}
PAUSE=1
SETTLE=${SETTLE:-1}

ORIGIN1=$((PORT_BASE + 1)) ORIGIN2=$((PORT_BASE + 2))
STATUS1=$((PORT_BASE + 101)) STATUS2=$((PORT_BASE + 102))
declare -A PORT=(
    [direct]=$ORIGIN1
    [nginx-nokeep]=$((PORT_BASE + 81))
    [nginx-keep]=$((PORT_BASE + 82))
    [haproxy-safe]=$((PORT_BASE + 83))
    [haproxy-splice]=$((PORT_BASE + 84))
    [upkeep]=$((PORT_BASE + 90))
    [upkeep-nokeep]=$((PORT_BASE + 91))
    [upkeep-copy]=$((PORT_BASE + 92))
    [upkeep-uring]=$((PORT_BASE + 93))
    [upkeep-uring-copy]=$((PORT_BASE + 94))
)
for t in $TARGETS; do
    [[ -n ${PORT[$t]:-} ]] || { echo "run.sh: unknown target $t" >&2; exit 2; }
done
ORIGIN1_TLS=$((PORT_BASE + 3)) ORIGIN2_TLS=$((PORT_BASE + 4))

# proc_of TARGET SCENARIO: the name of the process(es) serving that scenario (TLS scenarios run
# their own proxy processes, so the plain configurations stay exactly as they were).
proc_of() {
    if [[ $1 == direct ]]; then echo direct; return; fi
    case $2 in
        tls-keepalive | tls-close) echo "$1-tls" ;;
        tls-upstream) echo "$1-tlsup" ;;
        *) echo "$1" ;;
    esac
}

# url_of TARGET SCENARIO: where wrk goes.
url_of() {
    case $2 in
        tls-keepalive | tls-close)
            if [[ $1 == direct ]]; then echo "https://127.0.0.1:$ORIGIN1_TLS"; else echo "https://127.0.0.1:$((PORT[$1] + 100))"; fi ;;
        tls-upstream)
            if [[ $1 == direct ]]; then echo "http://127.0.0.1:$ORIGIN1"; else echo "http://127.0.0.1:$((PORT[$1] + 200))"; fi ;;
        *) echo "http://127.0.0.1:${PORT[$1]}" ;;
    esac
}

# --- what it needs -------------------------------------------------------------------------

install_missing() {
    local need=() sudo=""
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    ((TLS_ANY)) && ! command -v openssl >/dev/null && need+=(openssl)
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
TLS_PORTS=() ADMIN_PORTS=()
for t in "${!PORT[@]}"; do
    [[ $t == upkeep* ]] && ADMIN_PORTS+=($((PORT[$t] + 50)))
done
if ((TLS_ANY)); then
    TLS_PORTS=($ORIGIN1_TLS $ORIGIN2_TLS)
    for t in "${!PORT[@]}"; do
        [[ $t == direct ]] || TLS_PORTS+=($((PORT[$t] + 100)) $((PORT[$t] + 200)) $((PORT[$t] + 150)) $((PORT[$t] + 250)))
    done
fi
for p in $ORIGIN1 $ORIGIN2 $STATUS1 $STATUS2 "${PORT[@]}" "${ADMIN_PORTS[@]}" "${TLS_PORTS[@]}"; do
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
chmod 755 "$TMP" # nginx workers (user nobody) read the body files and write temp files here
PIDS=()
declare -A PID_OF

trap cleanup EXIT
trap 'exit 130' INT TERM

PROXY_CPU=() OTHER_CPU=()
if ((PIN)); then
    PROXY_CPU=(taskset -c 0) OTHER_CPU=(taskset -c 1)
fi

# TLS material, once per run: a self-signed CA and an ECDSA P-256 leaf for localhost and
# 127.0.0.1 (what every proxy's TLS listener serves, the origins' TLS listeners too).
CERTS=$TMP/tls
if ((TLS_ANY)); then
    mkdir -p "$CERTS"
    (
        cd "$CERTS"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=upkeep-bench-ca -keyout ca.key -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj /CN=localhost -keyout leaf.key -out leaf.csr
        printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature' \
            'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1' >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile leaf.ext -out leaf.pem
        cat leaf.pem leaf.key >leaf-with-key.pem # HAProxy's `crt` wants both in one file
    ) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; exit 1; }
    chmod -R a+rX "$CERTS"
fi

# origin_tls_server DIR PORT I: the origin's TLS listener (TLS cases only). The first request of
# each connection is logged with `$ssl_session_reused` ("r" resumed, "." full handshake): the
# upstream handshakes every proxy makes, counted the same way for all of them.
origin_tls_server() {
    ((TLS_ANY)) || return 0
    cat <<EOF
  map \$connection_requests \$first_request { 1 1; default 0; }
  log_format handshake '\$ssl_session_reused';
  ssl_session_cache shared:origin$3:10m;
  server {
    listen 127.0.0.1:$2 ssl backlog=4096;
    ssl_certificate $CERTS/leaf.pem; ssl_certificate_key $CERTS/leaf.key;
    access_log $1/handshakes.log handshake if=\$first_request;
    location = /small { default_type text/plain; return 200 "$SMALL_BODY"; }
    location = /64k   { root $TMP/www; default_type application/octet-stream; }
    location = /1m    { root $TMP/www; default_type application/octet-stream; }
  }
EOF
}

# Origins.
mkdir -p "$TMP/www"
head -c 65536 /dev/zero | tr '\0' 'x' >"$TMP/www/64k"
head -c 1048576 /dev/zero | tr '\0' 'x' >"$TMP/www/1m"
chmod -R a+rX "$TMP/www"
SMALL_BODY=$(printf 'x%.0s' $(seq 100))
for i in 1 2; do
    port=$((PORT_BASE + i)) status=$((PORT_BASE + 100 + i)) dir=$TMP/origin$i
    mkdir -p "$dir" && chmod 777 "$dir"
    origin_conf "$dir" "$port" \
        "    location = /64k   { root $TMP/www; default_type application/octet-stream; }
    location = /1m    { root $TMP/www; default_type application/octet-stream; }" \
        "  server { listen 127.0.0.1:$status; location / { stub_status; } }
$(origin_tls_server "$dir" $((PORT_BASE + 2 + i)) "$i")" >"$dir/nginx.conf"
    start "origin$i" "${OTHER_CPU[@]}" nginx -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
done
wait_listening origin1 $ORIGIN1
wait_listening origin2 $ORIGIN2
if ((TLS_ANY)); then
    wait_listening origin1 $ORIGIN1_TLS
    wait_listening origin2 $ORIGIN2_TLS
fi

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

# haproxy_extra_of TARGET: the HAProxy target's extra lines, one each for haproxy_cfg's
# DEFAULTS-LINE and GLOBAL-LINE. haproxy-splice: $HAPROXY_SPLICE (`option splice-auto`), and
# maxpipes 1024: its default with splicing on, maxconn / 4 = 2048 pipes, would need 20,494 descriptors,
# more than the 20,000 the run gets (HAProxy refuses to start); a pipe serves one connection
# while a large body passes, so 1024 cover the 64 clients (and the 1000 of fan-in).
haproxy_extra_of() {
    if [[ $1 == haproxy-splice ]]; then
        printf '%s\n%s\n' "$HAPROXY_SPLICE" "maxpipes 1024"
    else
        printf '\n\n'
    fi
}

for t in haproxy-safe haproxy-splice; do
    want $t || continue
    { read -r defaults_line; read -r global_line; } < <(haproxy_extra_of $t)
    haproxy_cfg "bind 127.0.0.1:${PORT[$t]}" "server s1 127.0.0.1:$ORIGIN1" "server s2 127.0.0.1:$ORIGIN2" \
        "$defaults_line" "$global_line" >"$TMP/$t.cfg"
    start $t "${PROXY_CPU[@]}" haproxy -db -f "$TMP/$t.cfg"
done

# upkeep_upstream_of / upkeep_limits_of TARGET: the upkeep target's extra lines in [[upstream]]
# and [limits].
upkeep_upstream_of() { [[ $1 == upkeep-nokeep ]] && echo "keepalive = 0   # pooling off" || true; }
upkeep_io_of() { [[ $1 == upkeep-uring* ]] && echo 'io = "uring"' || true; }
upkeep_limits_of() { [[ $1 == *-copy ]] && echo "splice_min = 0   # every body copied" || true; }

upkeep_proxy() { # name
    # admin: for upkeep_spliced_bytes_total (scraped before and after each run; idle otherwise).
    local top
    top="$(upkeep_io_of "$1")"$'\n'"admin = \"127.0.0.1:$((PORT[$1] + 50))\""
    upkeep_conf "${PORT[$1]}" "$top" "$(upkeep_upstream_of "$1")" "$(upkeep_limits_of "$1")" >"$TMP/$1.toml"
    start "$1" "${PROXY_CPU[@]}" "$UPKEEP_BIN" run --config "$TMP/$1.toml"
}
for t in upkeep upkeep-nokeep upkeep-copy upkeep-uring upkeep-uring-copy; do
    if want $t; then upkeep_proxy $t; fi
done

# --- TLS variants (TLS cases only) ------------------------------------------------------------
# Each proxy again, one worker, in its own process: MODE "tls" = a TLS listener on port +100
# with plain origins, "tlsup" = a plain listener on port +200 with the origins' TLS listeners,
# verified against the run's CA as localhost.

nginx_tls_proxy() { # target keepalive(0/1) mode
    local name=$1-$3 keep=$2 dir=$TMP/$1-$3 port servers listen proxy extra="" upstream_keep=""
    if [[ $3 == tls ]]; then
        port=$((PORT[$1] + 100)) servers="server 127.0.0.1:$ORIGIN1; server 127.0.0.1:$ORIGIN2;"
        listen="listen 127.0.0.1:$port ssl backlog=4096;
    ssl_certificate $CERTS/leaf.pem; ssl_certificate_key $CERTS/leaf.key;"
        proxy="proxy_pass http://up;"
    else
        port=$((PORT[$1] + 200)) servers="server 127.0.0.1:$ORIGIN1_TLS; server 127.0.0.1:$ORIGIN2_TLS;"
        listen="listen 127.0.0.1:$port backlog=4096;"
        proxy="proxy_pass https://up;"
        extra="proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_trusted_certificate $CERTS/ca.pem;"
    fi
    if ((keep)); then
        upstream_keep="keepalive 16;"
        proxy="$proxy proxy_http_version 1.1; proxy_set_header Connection \"\";"
    fi
    mkdir -p "$dir" && chmod 777 "$dir"
    cat >"$dir/nginx.conf" <<EOF
$(nginx_common "$dir")
http {
$(nginx_temp_paths "$dir")
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 75s;
  ssl_session_cache shared:SSL:10m;
  upstream up { $servers $upstream_keep }
  server {
    $listen
    location / { $proxy $extra }
  }
}
EOF
    start "$name" "${PROXY_CPU[@]}" nginx -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
}

haproxy_tls_proxy() { # target mode
    local name=$1-$2 port=${PORT[$1]} bind server1 server2
    if [[ $2 == tls ]]; then
        bind="bind 127.0.0.1:$((port + 100)) ssl crt $CERTS/leaf-with-key.pem alpn http/1.1"
        server1="server s1 127.0.0.1:$ORIGIN1" server2="server s2 127.0.0.1:$ORIGIN2"
    else
        local tls="ssl verify required ca-file $CERTS/ca.pem sni str(localhost) verifyhost localhost"
        bind="bind 127.0.0.1:$((port + 200))"
        server1="server s1 127.0.0.1:$ORIGIN1_TLS $tls" server2="server s2 127.0.0.1:$ORIGIN2_TLS $tls"
    fi
    local defaults_line global_line
    { read -r defaults_line; read -r global_line; } < <(haproxy_extra_of "$1")
    haproxy_cfg "$bind" "$server1" "$server2" "$defaults_line" "$global_line" >"$TMP/$name.cfg"
    start "$name" "${PROXY_CPU[@]}" haproxy -db -f "$TMP/$name.cfg"
}

upkeep_tls_proxy() { # target mode
    local name=$1-$2 listen_tls="" upstream_tls="" servers port admin
    if [[ $2 == tls ]]; then
        port=$((PORT[$1] + 100)) admin=$((PORT[$1] + 150))
        listen_tls="tls = { cert = \"$CERTS/leaf.pem\", key = \"$CERTS/leaf.key\" }"
        servers="\"127.0.0.1:$ORIGIN1\", \"127.0.0.1:$ORIGIN2\""
    else
        port=$((PORT[$1] + 200)) admin=$((PORT[$1] + 250))
        upstream_tls="tls = { ca = \"$CERTS/ca.pem\", sni = \"localhost\" }"
        servers="\"127.0.0.1:$ORIGIN1_TLS\", \"127.0.0.1:$ORIGIN2_TLS\""
    fi
    cat >"$TMP/$name.toml" <<EOF
workers = 1
admin = "127.0.0.1:$admin"

[[listen]]
addr = "127.0.0.1:$port"
$listen_tls

[[upstream]]
name = "origins"
servers = [$servers]
$upstream_tls
$(upkeep_upstream_of "$1")

[limits]
client_keepalive_requests = 1000000
$(upkeep_limits_of "$1")
EOF
    start "$name" "${PROXY_CPU[@]}" "$UPKEEP_BIN" run --config "$TMP/$name.toml"
}

TLS_MODES=()
((TLS_TERM)) && TLS_MODES+=(tls)
((TLS_UP)) && TLS_MODES+=(tlsup)
for mode in "${TLS_MODES[@]}"; do
    want nginx-nokeep && nginx_tls_proxy nginx-nokeep 0 "$mode"
    want nginx-keep && nginx_tls_proxy nginx-keep 1 "$mode"
    for t in haproxy-safe haproxy-splice; do
        if want $t; then haproxy_tls_proxy $t "$mode"; fi
    done
    for t in upkeep upkeep-nokeep upkeep-copy; do
        if want $t; then upkeep_tls_proxy $t "$mode"; fi
    done
done

for t in $TARGETS; do
    [[ $t == direct ]] && continue
    wait_listening "$t" "${PORT[$t]}"
    ((TLS_TERM)) && wait_listening "$t-tls" $((PORT[$t] + 100))
    ((TLS_UP)) && wait_listening "$t-tlsup" $((PORT[$t] + 200))
done

# --- accounting ------------------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# The target's processes: the one we started and its children (nginx's worker).
procs_of() {
    local pid=${PID_OF[$1]}
    echo "$pid" $(pgrep -P "$pid" || true)
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

run_wrk() { # out-file base-url path conns duration scenario
    local args=(-t"$WRK_THREADS" -c"$4" -d"$5s" --latency --timeout 5s)
    [[ $6 == close || $6 == tls-close ]] && args+=(-H 'Connection: close')
    timeout -k 5 $(($5 + 30)) "${OTHER_CPU[@]}" wrk "${args[@]}" "$2/$3" >"$1" 2>&1 || true
}

# Upstream TLS handshakes so far, "full resumed", summed over both origins' TLS logs.
origin_handshakes() {
    cat "$TMP"/origin[12]/handshakes.log 2>/dev/null | awk '{ if ($1 == "r") r++; else f++ } END { print f + 0, r + 0 }'
}

# admin_port PROCESS: the admin listener of an upkeep process (plain +50, TLS variants +150 and
# +250 of the target's port), or nothing for other proxies.
admin_port() {
    case $1 in
        upkeep*-tlsup) echo $((PORT[${1%-tlsup}] + 250)) ;;
        upkeep*-tls) echo $((PORT[${1%-tls}] + 150)) ;;
        upkeep*) echo $((PORT[$1] + 50)) ;;
    esac
}

# upkeep's upkeep_spliced_bytes_total (admin /metrics), or "-" (not upkeep, or no answer).
upkeep_spliced() { # process name
    local port
    port=$(admin_port "$1")
    [[ -n $port ]] || { echo -; return; }
    { curl -s --max-time 5 "http://127.0.0.1:$port/metrics" || true; } |
        awk '$1 == "upkeep_spliced_bytes_total" { n = $2; found = 1 } END { print found ? n : "-" }'
}

# upkeep's own count of its upstream TLS handshakes, "full resumed" (admin /metrics), or "- -".
upkeep_handshakes() { # process name
    local port
    case $1 in
        upkeep*-tls*) port=$(admin_port "$1") ;;
        *) echo "- -"; return ;;
    esac
    curl -s --max-time 5 "http://127.0.0.1:$port/metrics" | awk '
        /^upkeep_upstream_tls_handshakes_total/ { if ($1 ~ /resumed="true"/) r += $2; else f += $2 }
        END { print f + 0, r + 0 }'
}

if ((OPEN_LOOP)); then
    source "$HERE/open_loop.sh"
    exit 0
fi

# --- runs ------------------------------------------------------------------------------------

rm -rf "$OUT/raw" "$OUT/runs.csv" "$OUT/note.md" "$OUT/tls-handshakes.csv" "$OUT/tls.md"
mkdir -p "$OUT/raw"
HS_CSV=$OUT/tls-handshakes.csv
((TLS_ANY)) && echo "round,scenario,body,target,origin_full,origin_resumed,upkeep_full,upkeep_resumed" >"$HS_CSV"
CSV=$OUT/runs.csv
echo "round,scenario,body,target,conns,wrk_file,cpu_ticks,clk_tck,rss_kb,upstream_conns,tw_new,tw_after,duration_s,backend_ticks,wrk_ticks,machine_busy_ticks,machine_idle_ticks,cpu_user_ticks,cpu_sys_ticks,spliced_bytes" >"$CSV"

read -r -a TARGET_LIST <<<"$TARGETS"
n_cases=$(wc -w <<<"$CASES")
total_runs=$((ROUNDS * n_cases * ${#TARGET_LIST[@]}))
log "$total_runs runs of ${DURATION}s (${ROUNDS} round(s)), est. $((total_runs * (DURATION + SETTLE + PAUSE + 1) / 60 + 1)) min"

log "warm-up: ${WARMUP}s per target (not recorded)"
for t in "${TARGET_LIST[@]}"; do
    declare -A warmed=()
    for case in $CASES; do
        url=$(url_of "$t" "${case%%:*}")
        [[ -n ${warmed[$url]:-} ]] && continue
        warmed[$url]=1
        run_wrk "$TMP/warmup.txt" "$url" small "$CONNS" "$WARMUP" keepalive
    done
    unset warmed
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
            procs=() url=$(url_of "$t" "$scenario") proc=$(proc_of "$t" "$scenario")
            [[ $t == direct ]] || read -r -a procs <<<"$(procs_of "$proc")"
            file=raw/r$round-$scenario-$body-$t.txt
            # A short unrecorded run first, so the measured one starts in steady state (pools
            # filled again after the idle time since this target's previous run).
            ((SETTLE > 0)) && run_wrk "$TMP/settle.txt" "$url" "$body" "$conns" "$SETTLE" "$scenario"
            reset_peak_rss "${procs[@]}"
            time_wait >"$TMP/tw.before"
            a1=$(accepts $STATUS1) a2=$(accepts $STATUS2)
            s0=$(upkeep_spliced "$proc")
            read -r cu0 cs0 <<<"$(cpu_split "${procs[@]}")"
            o0=$(cpu_ticks "${ORIGIN_PROCS[@]}")
            children_ticks
            w0=$CHILD_TICKS
            if [[ $scenario == tls-* ]]; then
                read -r hf0 hr0 < <(origin_handshakes)
                read -r uf0 ur0 < <(upkeep_handshakes "$proc")
            fi
            read -r busy0 idle0 < <(machine_ticks)
            run_wrk "$OUT/$file" "$url" "$body" "$conns" "$DURATION" "$scenario"
            read -r busy1 idle1 < <(machine_ticks)
            hs_note=""
            if [[ $scenario == tls-* ]]; then
                read -r hf1 hr1 < <(origin_handshakes)
                read -r uf1 ur1 < <(upkeep_handshakes "$proc")
                uf=- ur=-
                [[ $uf0 == - ]] || uf=$((uf1 - uf0)) ur=$((ur1 - ur0))
                echo "$round,$scenario,$body,$t,$((hf1 - hf0)),$((hr1 - hr0)),$uf,$ur" >>"$HS_CSV"
                hs_note=", upstream TLS handshakes $((hf1 - hf0)) full + $((hr1 - hr0)) resumed"
            fi
            read -r cu1 cs1 <<<"$(cpu_split "${procs[@]}")"
            o1=$(cpu_ticks "${ORIGIN_PROCS[@]}")
            children_ticks
            w1=$CHILD_TICKS
            s1=$(upkeep_spliced "$proc")
            b1=$(accepts $STATUS1) b2=$(accepts $STATUS2)
            time_wait >"$TMP/tw.after"
            # Each origin's delta includes our second status request's own connection.
            upstream=$((b1 - a1 - 1 + b2 - a2 - 1))
            tw_new=$(comm -13 "$TMP/tw.before" "$TMP/tw.after" | wc -l)
            tw_after=$(wc -l <"$TMP/tw.after")
            if [[ $t == direct ]]; then
                cpu=- cpu_user=- cpu_sys=- rss=-
            else
                cpu_user=$((cu1 - cu0)) cpu_sys=$((cs1 - cs0))
                cpu=$((cpu_user + cpu_sys)) rss=$(peak_rss_kb "${procs[@]}")
            fi
            spliced=- splice_note=""
            if [[ $s0 != - && $s1 != - ]]; then
                spliced=$((s1 - s0)) splice_note=", spliced $((spliced / 1048576)) MiB"
            fi
            echo "$round,$scenario,$body,$t,$conns,$file,$cpu,$CLK_TCK,$rss,$upstream,$tw_new,$tw_after,$DURATION,$((o1 - o0)),$((w1 - w0)),$((busy1 - busy0)),$((idle1 - idle0)),$cpu_user,$cpu_sys,$spliced" >>"$CSV"
            done_runs=$((done_runs + 1))
            rps=$(awk '/^Requests\/sec/ {print $2}' "$OUT/$file")
            log "[$done_runs/$total_runs] round $round $scenario/$body $t: ${rps:-no result} req/s, upstream conns $upstream$hs_note, cpu ticks $cpu (user $cpu_user, sys $cpu_sys)$splice_note"
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

# tls_summary: the TLS scenarios' table (markdown on stdout) from runs.csv, the wrk outputs and
# tls-handshakes.csv. Medians over rounds per scenario and target; ratios are ratios of those
# medians to nginx-keep's and haproxy-safe's in the same scenario.
tls_summary() {
    awk -F, -v out="$OUT" '
    function med(key, n, i, j, t, a) {
        n = cnt[key]; if (n == 0) return ""
        for (i = 1; i <= n; i++) a[i] = val[key, i]
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(key, v) { if (v == "") return; cnt[key]++; val[key, cnt[key]] = v }
    function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
    function num(v, places) { return v == "" ? "-" : sprintf("%." places "f", v) }
    FNR == 1 { file++; next }
    file == 1 && $2 ~ /^tls-/ {
        c = $2 ":" $3; t = $4
        if (!(c in seen_case)) { seen_case[c] = 1; cases[++ncases] = c }
        if (!((c, t) in seen)) { seen[c, t] = 1; targets[c, ++nt[c]] = t }
        reqs = 0; rps = ""; errs = 0; wrk = out "/" $6
        while ((getline line < wrk) > 0) {
            split(line, w, " ")
            if (line ~ /requests in/) reqs = w[1]
            if (line ~ /^Requests\/sec/) rps = w[2]
            if (line ~ /Non-2xx/) errs += w[5]
            if (line ~ /Socket errors/) { gsub(/[^0-9 ]/, "", line); split(line, e, " "); errs += e[1] + e[2] + e[3] + e[4] }
        }
        close(wrk)
        req[$1, c, t] = reqs
        add("rps" SUBSEP c SUBSEP t, rps)
        add("err" SUBSEP c SUBSEP t, errs)
        if ($7 != "-" && reqs > 0) add("cpu" SUBSEP c SUBSEP t, $7 / $8 * 1e6 / reqs)
        next
    }
    file == 2 {
        c = $2 ":" $3; t = $4; reqs = req[$1, c, t]
        if (reqs > 0) {
            add("hf" SUBSEP c SUBSEP t, $5 * 1e5 / reqs); add("hr" SUBSEP c SUBSEP t, $6 * 1e5 / reqs)
            if ($7 != "-") { add("uf" SUBSEP c SUBSEP t, $7 * 1e5 / reqs); add("ur" SUBSEP c SUBSEP t, $8 * 1e5 / reqs) }
        }
    }
    END {
        print "| scenario | target | req/s | ÷ nginx-keep | ÷ haproxy-safe | proxy CPU µs/req | ÷ nginx-keep | ÷ haproxy-safe | upstream TLS handshakes per 100k req, full + resumed (origins) | upkeep'"'"'s own count per 100k | errors |"
        print "|---|---|---|---|---|---|---|---|---|---|---|"
        for (i = 1; i <= ncases; i++) {
            c = cases[i]
            nr = med("rps" SUBSEP c SUBSEP "nginx-keep"); hr = med("rps" SUBSEP c SUBSEP "haproxy-safe")
            nc = med("cpu" SUBSEP c SUBSEP "nginx-keep"); hc = med("cpu" SUBSEP c SUBSEP "haproxy-safe")
            for (j = 1; j <= nt[c]; j++) {
                t = targets[c, j]
                r = med("rps" SUBSEP c SUBSEP t); u = med("cpu" SUBSEP c SUBSEP t)
                hf = med("hf" SUBSEP c SUBSEP t); hs = med("hr" SUBSEP c SUBSEP t)
                uf = med("uf" SUBSEP c SUBSEP t); us = med("ur" SUBSEP c SUBSEP t)
                own = (uf == "") ? "-" : num(uf, 0) " + " num(us, 0)
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s + %s | %s | %s |\n", c, t, num(r, 0), ratio(r, nr), ratio(r, hr), num(u, 1), ratio(u, nc), ratio(u, hc), num(hf, 0), num(hs, 0), own, num(med("err" SUBSEP c SUBSEP t), 0)
            }
        }
    }' "$CSV" "$HS_CSV"
}


pin_note="nothing pinned (the scheduler spreads wrk, the origins and the proxy over the cores)"
((PIN)) && pin_note="proxies pinned to CPU 0, wrk and the origins to CPU 1 (taskset)"
# The command line shows the knobs when the run was not a plain one (TLS cases, the splice
# comparison, any other choice of cases or targets).
SHOW_KNOBS=$TLS_ANY
[[ $CASES == "$DEFAULT_CASES" && $TARGETS == "$DEFAULT_TARGETS" ]] || SHOW_KNOBS=1
NOTE="Command: \`$( ((SHOW_KNOBS)) && echo "ROUNDS=$ROUNDS DURATION=$DURATION CASES=\"$CASES\" TARGETS=\"$TARGETS\" ")bash benches/load/run.sh$( ((QUICK)) && echo ' --quick')\` ($(date -u +%Y-%m-%d), \
$ROUNDS round(s) of ${DURATION} s per run, wrk -t$WRK_THREADS, $CONNS clients, fan-in $FANIN_CONNS clients, \
$pin_note).

Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r); \
$(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'); \
load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg). \
upkeep: $([[ -n ${UPKEEP_BIN:-} ]] && echo "built from $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- core runtime-shared runtime-mio || echo ' + local changes'), last change to core/ or runtime-mio/: $(git -C "$REPO" log -1 --format='%h %s' -- core runtime-mio | cut -c1-80)" || echo 'not run').

Core allocations (steady state, \`cargo bench -p upkeep-benches --bench alloc\`): $ALLOC_LINE.

Columns: proxy CPU = utime+stime of the proxy's processes during the run ÷ requests (user and \
sys: utime and stime alone); peak RSS = \
VmHWM summed over its processes; upstream conns = connections the origins accepted (stub_status); \
new TIME_WAIT = TIME_WAIT sockets with an origin port at either end that appeared during the run \
(TIME_WAIT after = all of them, including earlier runs'). For \`direct\` the \"upstream\" \
connections are wrk's own. Spliced KiB/req (upkeep targets only) = the growth of \
\`upkeep_spliced_bytes_total\` on upkeep's admin listener during the run ÷ requests: body bytes \
moved socket → pipe → socket with splice(2) (\`[limits] splice_min\`, default 32k; \`upkeep-copy\` \
sets 0 = always copy); \`haproxy-splice\` = haproxy-safe + \`$HAPROXY_SPLICE\` (maxpipes 1024)."
printf '%s\n' "$NOTE" >"$OUT/note.md"
"$REPORT_BIN" "$CSV" "$OUT"
if ((TLS_ANY)); then
    {
        printf '# Load comparison over TLS: upkeep, nginx, HAProxy\n\n%s\n\n' "$NOTE"
        printf 'TLS: ECDSA P-256 leaf signed by a per-run CA; wrk (OpenSSL) as the TLS client; the proxies verify the origins against the CA as `localhost`. `direct` = wrk to origin 1 over https (tls-keepalive/close) or plain (tls-upstream). Upstream handshakes are counted at the origins (first request of each TLS connection, `$ssl_session_reused`); for tls-keepalive/close the proxies talk plain HTTP upstream, so only `direct` (wrk'"'"'s own handshakes) shows any. Medians over %s round(s); ratios are ratios of the medians. All runs, including the plain-HTTP columns (upstream conns, TIME_WAIT, latency), are in results.md next to this file; raw data in runs.csv, tls-handshakes.csv and raw/.\n\n' "$ROUNDS"
        tls_summary
    } >"$OUT/tls.md"
    log "wrote $OUT/tls.md"
fi
log "wrote $OUT/results.md and $OUT/chart.svg"
