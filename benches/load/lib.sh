#!/usr/bin/env bash
# Sourced by benches/load/run.sh and ab.sh: starting and stopping the
# processes of a run, medians, the nginx origin and HAProxy configurations, and the CPU accounting. The
# caller sets TMP (a temporary directory), PIDS=() and `declare -A PID_OF` first, and installs
# `trap cleanup EXIT`.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

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
            echo "${0##*/}: $name exited at startup:" >&2
            cat "$TMP/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "${0##*/}: $name is not listening on $port after 10 s" >&2
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

# origin_conf DIR PORT [SERVER-LINES [HTTP-LINES]]: an origin's nginx.conf (one worker,
# keep-alive without a request cap; /small answers $SMALL_BODY), with more lines for its server
# block (locations) and for its http block (more servers).
origin_conf() {
    cat <<EOF
$(nginx_common "$1")
http {
$(nginx_temp_paths "$1")
  access_log off; sendfile on; tcp_nopush on;
  keepalive_requests 1000000; keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location = /small { default_type text/plain; return 200 "$SMALL_BODY"; }
${3:-}
  }
${4:-}
}
EOF
}

# median FORMAT < "N N ...": the median of the numbers read (words that are not numbers, such as
# "-", are left out), printed with FORMAT (printf); "-" when there is none.
median() {
    tr ' ' '\n' | awk '/^[0-9]+(\.[0-9]+)?$/' | sort -g | awk -v f="$1" '{ a[NR] = $1 }
        END { if (NR == 0) print "-"; else printf f "\n", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# upkeep_conf PORT [TOP-LINES [UPSTREAM-LINES [LIMITS-LINES]]]: an upkeep configuration, one
# worker, a listener on 127.0.0.1:PORT, both origins ($ORIGIN1, $ORIGIN2) round-robin, with more
# lines at the top level, in [[upstream]] and in [limits].
upkeep_conf() {
    cat <<EOF
workers = 1
${2:-}

[[listen]]
addr = "127.0.0.1:$1"

[[upstream]]
name = "origins"
servers = ["127.0.0.1:$ORIGIN1", "127.0.0.1:$ORIGIN2"]
${3:-}

[limits]
# Like the nginx configs (keepalive_requests 1000000) and HAProxy: wrk's connections are not
# closed every 1000 requests. The upstream side keeps its defaults.
client_keepalive_requests = 1000000
${4:-}
EOF
}

# haproxy_cfg BIND SERVER1 SERVER2 [DEFAULTS-LINE [GLOBAL-LINE]]: the HAProxy configuration,
# one thread, http-reuse safe (plus the lines of haproxy-splice, haproxy_extra_of).
haproxy_cfg() {
    cat <<EOF
global
  nbthread 1
  maxconn 8192
  ${5:-}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse safe
  ${4:-}
frontend fe
  $1
  default_backend be
backend be
  balance roundrobin
  $2
  $3
EOF
}

# cpu_split PIDS... → "utime stime" in clock ticks (/proc/PID/stat fields 14 and 15, summed over
# the processes; a process's figures include all its threads, live and exited).
cpu_split() {
    local user=0 sys=0 p stat f
    for p in "$@"; do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a f <<<"${stat##*) }" # from field 3 (state) on: utime is f[11], stime f[12]
        user=$((user + f[11])) sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

cpu_ticks() { # pids... → utime+stime
    local user sys
    read -r user sys <<<"$(cpu_split "$@")"
    echo $((user + sys))
}
